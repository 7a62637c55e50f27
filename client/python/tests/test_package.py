"""The package itself: services and methods derived from the generated descriptors, type stubs, and
how connect() finds its settings."""

import glob
import os
import re

import pytest

import brainstem
from brainstem import errors
from conftest import REPO


def proto_services():
    """(service, [rpc, …]) as declared in proto/brainstem/v1/*.proto."""
    found = {}
    for path in glob.glob(os.path.join(REPO, "proto", "brainstem", "v1", "*.proto")):
        text = open(path).read()
        for m in re.finditer(r"^service (\w+) \{(.*?)^\}", text, re.S | re.M):
            found[m.group(1)] = re.findall(r"^\s*rpc (\w+)\(", m.group(2), re.M)
    return found


def test_one_attribute_per_service_and_method_in_snake_case(bs):
    declared = proto_services()
    assert declared, "no services found in proto/"
    assert set(bs.services) == {brainstem.snake_case(s) for s in declared}
    for service, rpcs in declared.items():
        proxy = getattr(bs, brainstem.snake_case(service))
        assert set(proxy.methods) == {brainstem.snake_case(r) for r in rpcs}, service


def test_snake_case_names():
    assert brainstem.snake_case("WhoAmI") == "who_am_i"
    assert brainstem.snake_case("GetStatus") == "get_status"
    assert brainstem.snake_case("CheckFormSubmit") == "check_form_submit"
    assert brainstem.snake_case("Admin") == "admin"


def test_generated_stubs_carry_type_stubs():
    import brainstem.v1

    here = os.path.dirname(brainstem.v1.__file__)
    for name in ("admin", "policy", "episodic", "tokens", "supervisor"):
        assert os.path.exists(os.path.join(here, f"{name}_pb2.pyi")), name
        assert os.path.exists(os.path.join(here, f"{name}_pb2_grpc.py")), name


def test_missing_dev_state_dir_says_what_it_looked_for(tmp_path):
    with pytest.raises(errors.ConfigurationError) as info:
        brainstem.connect("127.0.0.1:1", state_dir=tmp_path / "nothing")
    text = str(info.value)
    assert str(tmp_path / "nothing" / "pki" / "ca.pem") in text
    assert "BRAINSTEM_STATE_DIR" in text and "--dev" in text


def test_cert_without_key_is_refused(daemon):
    with pytest.raises(errors.ConfigurationError, match="go together"):
        brainstem.connect(daemon.addr, state_dir=daemon.state_dir, cert=os.path.join(daemon.pki, "admin.pem"))


def test_environment_variables_are_brainstemctls(daemon, monkeypatch):
    monkeypatch.setenv("BRAINSTEM_ENDPOINT", daemon.addr)
    monkeypatch.setenv("BRAINSTEM_CA", os.path.join(daemon.pki, "ca.pem"))
    monkeypatch.setenv("BRAINSTEM_CERT", os.path.join(daemon.pki, "admin.pem"))
    monkeypatch.setenv("BRAINSTEM_KEY", os.path.join(daemon.pki, "admin.key"))
    monkeypatch.setenv("BRAINSTEM_STATE_DIR", "/nonexistent")
    with brainstem.connect(breaker=False) as bs:
        assert bs.admin.who_am_i().principal == "spiffe://brainstem.dev/admin"
    monkeypatch.delenv("BRAINSTEM_CA")
    monkeypatch.delenv("BRAINSTEM_CERT")
    monkeypatch.delenv("BRAINSTEM_KEY")
    monkeypatch.setenv("BRAINSTEM_STATE_DIR", daemon.state_dir)
    with brainstem.connect(breaker=False) as bs:
        assert bs.admin.ping(payload=b"env").payload == b"env"


def test_pem_bytes_work_as_well_as_paths(daemon):
    read = lambda name: open(os.path.join(daemon.pki, name), "rb").read()  # noqa: E731
    with brainstem.connect(daemon.addr, ca=read("ca.pem"), cert=read("admin.pem"), key=read("admin.key"), breaker=False) as bs:
        assert bs.admin.who_am_i().principal_source == "san_uri"


def test_bad_field_names_are_type_errors(bs):
    with pytest.raises(TypeError, match="no field 'nope'"):
        bs.admin.ping(nope=1)
