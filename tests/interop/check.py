#!/usr/bin/env python3
"""Python interop check for brainstemd: calls the real daemon as a Python gRPC client would.

Starts `brainstemd --dev` on 127.0.0.1:0 in a throwaway state directory, learns its gRPC address from
the systemd notify protocol (READY=1 / STATUS=serving grpc=...), generates Python stubs from proto/ at
run time, and checks Health, Admin (WhoAmI, Ping, GetStatus), authorization, rich error details,
server reflection, mutual TLS enforcement, capability tokens (Issue, Verify, Revoke), Policy.Check, the
Supervisor (ListActors, RestartActor, WatchActors) and Episodic (Store, Query, validation) services,
and a clean SIGTERM stop.

Prints `PASS name` / `FAIL name: reason` per check and a closing line `interop: N passed, M failed`.
Exits non-zero if any check failed.

Needs: grpcio, grpcio-tools, grpcio-health-checking, grpcio-reflection, grpcio-status, protobuf
(see requirements.txt). Usage, from the repository root:

    python tests/interop/check.py --bin-dir target/debug [--proto-dir proto]
"""

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import grpc

STARTUP_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
RPC_TIMEOUT_S = 10.0
AGENT_PRINCIPAL = "spiffe://brainstem.dev/agent/web"


class CheckFailed(Exception):
    pass


def expect(condition, reason):
    if not condition:
        raise CheckFailed(reason)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn):
        try:
            fn()
        except CheckFailed as err:
            self.fail(name, str(err))
        except grpc.RpcError as err:
            self.fail(name, f"unexpected RPC error {describe_rpc_error(err)}")
        except Exception as err:  # noqa: BLE001 - a check must never abort the run
            self.fail(name, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)

    def fail(self, name, reason):
        self.failed += 1
        print(f"FAIL {name}: {reason}", flush=True)

    def summary(self):
        print(f"interop: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


def describe_rpc_error(err):
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    return f"{code}: {details!r}"


# --- stubs -------------------------------------------------------------------------------------------


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc over proto_dir/brainstem/v1/*.proto into out_dir and puts it on sys.path."""
    import importlib.resources

    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(proto_dir, "brainstem", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}/brainstem/v1")
    well_known = str(importlib.resources.files(grpc_tools) / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed (exit {rc}): {' '.join(args)}")
    sys.path.insert(0, out_dir)


# --- daemon ------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, bin_dir, work_dir):
        self.brainstemd = os.path.join(bin_dir, "brainstemd")
        self.brainstemctl = os.path.join(bin_dir, "brainstemctl")
        for path in (self.brainstemd, self.brainstemctl):
            if not os.access(path, os.X_OK):
                raise SystemExit(f"not an executable: {path}")
        self.state_dir = os.path.join(work_dir, "state")
        self.notify_path = os.path.join(work_dir, "notify.sock")
        self.log_path = os.path.join(work_dir, "brainstemd.log")
        self.proc = None
        self.grpc_addr = None
        self.status_line = None
        # Kept open while the daemon runs, so its later notify messages (STOPPING=1) have a receiver.
        self.notify_sock = None

    def stderr_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.notify_path)
        self.notify_sock = sock
        try:
            env = dict(os.environ)
            env["NOTIFY_SOCKET"] = self.notify_path
            for var in ("BRAINSTEM_CONFIG", "BRAINSTEM_STATE_DIR", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(var, None)
            env.setdefault("RUST_LOG", "info")
            cmd = [
                self.brainstemd,
                "--dev",
                "--state-dir",
                self.state_dir,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            messages = []
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise CheckFailed(
                        f"brainstemd exited with {rc} before READY=1; notify messages {messages!r}; "
                        f"its output:\n{self.stderr_text()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(
                        f"no READY=1 within {STARTUP_DEADLINE_S:.0f} s; notify messages {messages!r}; "
                        f"its output:\n{self.stderr_text()}"
                    )
                sock.settimeout(min(left, 0.25))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                text = data.decode("utf-8", "replace")
                messages.append(text)
                lines = text.split("\n")
                if "READY=1" not in lines:
                    continue
                status = next((l[len("STATUS="):] for l in lines if l.startswith("STATUS=")), None)
                expect(status is not None, f"READY=1 without STATUS=: {text!r}")
                m = re.search(r"(?:^|\s)grpc=(\S+)", status)
                expect(m is not None, f"no grpc= in STATUS: {status!r}")
                self.grpc_addr = m.group(1)
                self.status_line = status
                return
        except BaseException:
            self.close_notify()
            raise

    def issue_cert(self, principal):
        """Mints a client cert with brainstemctl; returns (cert_pem_bytes, key_pem_bytes)."""
        out_dir = os.path.join(self.state_dir, "pki", "clients")
        cmd = [self.brainstemctl, "--state-dir", self.state_dir, "certs", "issue", "--principal", principal]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        expect(
            res.returncode == 0,
            f"{' '.join(cmd)} exited {res.returncode}: {res.stdout}{res.stderr}",
        )
        name = principal.rstrip("/").rsplit("/", 1)[-1]
        return read(os.path.join(out_dir, f"{name}.pem")), read(os.path.join(out_dir, f"{name}.key"))

    def stop(self):
        """SIGTERM; returns the exit code, or None if it did not exit within STOP_DEADLINE_S."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.drain_notify()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            return None

    def drain_notify(self):
        """Notify messages received since the last call (non-blocking)."""
        messages = []
        if self.notify_sock is None:
            return messages
        self.notify_sock.setblocking(False)
        while True:
            try:
                messages.append(self.notify_sock.recv(65536).decode("utf-8", "replace"))
            except (BlockingIOError, InterruptedError):
                return messages

    def close_notify(self):
        if self.notify_sock is not None:
            self.notify_sock.close()
            self.notify_sock = None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_notify()


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- checks ------------------------------------------------------------------------------------------


def secure_channel(addr, ca, cert=None, key=None, server_name=None):
    if cert is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = []
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(addr, creds, options=options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", default="target/debug", help="directory holding brainstemd and brainstemctl")
    parser.add_argument("--proto-dir", default="proto", help="proto include root (holds brainstem/v1/*.proto)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (state, log) for inspection")
    args = parser.parse_args()

    work_dir = tempfile.mkdtemp(prefix="brainstem-interop-")
    results = Results()
    daemon = None
    try:
        gen_dir = os.path.join(work_dir, "gen")
        os.makedirs(gen_dir)
        generate_stubs(args.proto_dir, gen_dir)

        from brainstem.v1 import admin_pb2, admin_pb2_grpc, policy_pb2, policy_pb2_grpc, tokens_pb2, tokens_pb2_grpc
        from google.protobuf import struct_pb2
        from brainstem.v1 import episodic_pb2, episodic_pb2_grpc
        from brainstem.v1 import supervisor_pb2, supervisor_pb2_grpc
        from google.rpc import error_details_pb2
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )
        from grpc_status import rpc_status

        def bad_request_fields(err):
            """The fields named by the google.rpc.BadRequest detail of a failed call."""
            status = rpc_status.from_call(err)
            expect(status is not None, "no grpc-status-details-bin in the trailing metadata")
            fields = []
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields.extend(v.field for v in bad.field_violations)
            return fields

        daemon = Daemon(os.path.abspath(args.bin_dir), work_dir)
        try:
            daemon.start()
        except CheckFailed as err:
            results.fail("startup", str(err))
            return results.summary()
        print(f"# brainstemd up: {daemon.status_line}", flush=True)

        pki = os.path.join(daemon.state_dir, "pki")
        ca = read(os.path.join(pki, "ca.pem"))
        admin_cert = read(os.path.join(pki, "admin.pem"))
        admin_key = read(os.path.join(pki, "admin.key"))
        addr = daemon.grpc_addr

        admin_ch = secure_channel(addr, ca, admin_cert, admin_key)
        admin = admin_pb2_grpc.AdminStub(admin_ch)

        def health():
            stub = health_pb2_grpc.HealthStub(admin_ch)
            for service in ("", "brainstem.v1.Admin"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
                expect(
                    reply.status == health_pb2.HealthCheckResponse.SERVING,
                    f"service {service!r}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
                )

        def whoami_admin():
            reply = admin.WhoAmI(admin_pb2.WhoAmIRequest(), timeout=RPC_TIMEOUT_S)
            expect("admin" in reply.principal, f"principal {reply.principal!r}")
            expect(reply.principal_source == "san_uri", f"principal_source {reply.principal_source!r}")
            expect("*" in reply.capabilities, f"capabilities {list(reply.capabilities)!r}")

        def ping_echo():
            reply = admin.Ping(admin_pb2.PingRequest(payload=b"hello"), timeout=RPC_TIMEOUT_S)
            expect(reply.payload == b"hello", f"payload {reply.payload!r}")

        def status_admin():
            reply = admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
            expect(reply.boot_count >= 1, f"boot_count {reply.boot_count}")

        def reader():
            cert, key = daemon.issue_cert("reader")
            with secure_channel(addr, ca, cert, key) as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                me = stub.WhoAmI(admin_pb2.WhoAmIRequest(), timeout=RPC_TIMEOUT_S)
                expect(me.principal == "reader", f"principal {me.principal!r}")
                expect(me.principal_source == "common_name", f"principal_source {me.principal_source!r}")
                expect(len(me.capabilities) == 0, f"capabilities {list(me.capabilities)!r}")
                try:
                    stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as err:
                    expect(
                        err.code() == grpc.StatusCode.PERMISSION_DENIED,
                        f"GetStatus: {describe_rpc_error(err)}, want PERMISSION_DENIED",
                    )
                else:
                    raise CheckFailed("GetStatus succeeded for a principal without admin.status")

        def san_uri():
            cert, key = daemon.issue_cert(AGENT_PRINCIPAL)
            with secure_channel(addr, ca, cert, key) as ch:
                me = admin_pb2_grpc.AdminStub(ch).WhoAmI(admin_pb2.WhoAmIRequest(), timeout=RPC_TIMEOUT_S)
                expect(me.principal == AGENT_PRINCIPAL, f"principal {me.principal!r}")
                expect(me.principal_source == "san_uri", f"principal_source {me.principal_source!r}")

        def invalid_argument():
            try:
                admin.Ping(admin_pb2.PingRequest(delay_ms=10001), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                expect(
                    err.code() == grpc.StatusCode.INVALID_ARGUMENT,
                    f"{describe_rpc_error(err)}, want INVALID_ARGUMENT",
                )
                fields = bad_request_fields(err)
                expect("delay_ms" in fields, f"BadRequest field violations {fields!r}")
            else:
                raise CheckFailed("Ping with delay_ms=10001 succeeded")

        def reflection():
            db = ProtoReflectionDescriptorDatabase(admin_ch)
            services = list(db.get_services())
            for want in ("brainstem.v1.Admin", "grpc.health.v1.Health"):
                expect(want in services, f"{want} not listed; got {services!r}")
            # Resolving a symbol proves the descriptors served are usable, not just the names.
            fd = db.FindFileContainingSymbol("brainstem.v1.Admin")
            expect(
                any(s.name == "Admin" for s in fd.service),
                f"file {fd.name!r} holds no service Admin",
            )

        def no_client_cert():
            # The server ends the TLS 1.3 handshake with a certificate_required alert; gRPC core logs that
            # on stderr (TLSV1_ALERT_CERTIFICATE_REQUIRED / TSI_DATA_CORRUPTED): expected, not a failure.
            print("# no_client_cert: gRPC core may log TLSV1_ALERT_CERTIFICATE_REQUIRED on stderr", flush=True)
            with secure_channel(addr, ca) as ch:
                try:
                    reply = admin_pb2_grpc.AdminStub(ch).Ping(admin_pb2.PingRequest(payload=b"x"), timeout=5)
                except grpc.RpcError as err:
                    expect(
                        err.code() == grpc.StatusCode.UNAVAILABLE,
                        f"{describe_rpc_error(err)}, want UNAVAILABLE",
                    )
                else:
                    raise CheckFailed(f"Ping without a client certificate succeeded: {reply!r}")

        supervisor = supervisor_pb2_grpc.SupervisorStub(admin_ch)
        episodic = episodic_pb2_grpc.EpisodicStub(admin_ch)
        dim = 384

        def unit(i):
            return [1.0 if j == i else 0.01 for j in range(dim)]

        def list_actors():
            reply = supervisor.ListActors(supervisor_pb2.ListActorsRequest(), timeout=RPC_TIMEOUT_S)
            by_name = {a.name: a for a in reply.actors}
            expect("episodic" in by_name, f"actors {list(by_name)!r}")
            expect(by_name["episodic"].state == "running", f"state {by_name['episodic'].state!r}")
            expect(by_name["episodic"].kind == "actor", f"episodic kind {by_name['episodic'].kind!r}")
            writer = by_name.get("audit-writer")
            expect(writer is not None and writer.kind == "worker", f"audit-writer {writer!r}")
            expect(writer.state == "running", f"audit-writer state {writer.state!r}")
            stub = health_pb2_grpc.HealthStub(admin_ch)
            reply = stub.Check(health_pb2.HealthCheckRequest(service="brainstem.v1.Episodic"), timeout=RPC_TIMEOUT_S)
            expect(reply.status == health_pb2.HealthCheckResponse.SERVING, f"Episodic health {reply.status}")

        def restart_actor():
            before = supervisor.GetActor(supervisor_pb2.GetActorRequest(name="episodic"), timeout=RPC_TIMEOUT_S).actor
            reply = supervisor.RestartActor(supervisor_pb2.RestartActorRequest(name="episodic"), timeout=RPC_TIMEOUT_S)
            expect(reply.actor.state == "running", f"state after restart {reply.actor.state!r}")
            expect(reply.actor.restarts == before.restarts + 1, f"restarts {before.restarts} -> {reply.actor.restarts}")
            try:
                supervisor.RestartActor(supervisor_pb2.RestartActorRequest(name="no-such-actor"), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.NOT_FOUND, f"{describe_rpc_error(err)}, want NOT_FOUND")
            else:
                raise CheckFailed("RestartActor of an unknown actor succeeded")

        def critical_worker_readiness():
            # A stopped critical worker makes the daemon not ready, naming it; starting it restores that.
            health_stub = health_pb2_grpc.HealthStub(admin_ch)
            supervisor.StopActor(supervisor_pb2.StopActorRequest(name="audit-writer"), timeout=RPC_TIMEOUT_S)
            try:
                reply = supervisor.GetHealth(supervisor_pb2.GetHealthRequest(), timeout=RPC_TIMEOUT_S)
                expect(not reply.ready, "ready with the audit writer stopped")
                expect(list(reply.not_ready) == ["audit-writer"], f"not_ready {list(reply.not_ready)!r}")
                overall = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
                expect(overall.status == health_pb2.HealthCheckResponse.NOT_SERVING, f"overall health {overall.status}")
            finally:
                supervisor.StartActor(supervisor_pb2.StartActorRequest(name="audit-writer"), timeout=RPC_TIMEOUT_S)
            reply = supervisor.GetHealth(supervisor_pb2.GetHealthRequest(), timeout=RPC_TIMEOUT_S)
            expect(reply.ready and not reply.not_ready, f"after start: ready {reply.ready}, not_ready {list(reply.not_ready)!r}")

        def undecodable_invalid_argument():
            # Bytes that are no PingRequest: the daemon answers INVALID_ARGUMENT, not INTERNAL.
            raw = admin_ch.unary_unary("/brainstem.v1.Admin/Ping")
            try:
                raw(b"\xff\xff\xff\xff", timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{describe_rpc_error(err)}, want INVALID_ARGUMENT")
            else:
                raise CheckFailed("garbage bytes were accepted as a PingRequest")

        def watch_actors():
            stream = supervisor.WatchActors(supervisor_pb2.WatchActorsRequest(name="episodic"), timeout=RPC_TIMEOUT_S)
            first = next(stream)
            expect(first.actor.name == "episodic", f"first event {first!r}")
            stream.cancel()

        def store_and_query():
            stored = episodic.Store(
                episodic_pb2.StoreRequest(
                    episode=episodic_pb2.Episode(text="the kettle boiled", source="interop", kind="observation", embedding=unit(5))
                ),
                timeout=RPC_TIMEOUT_S,
            )
            expect(len(stored.id) == 16, f"id {stored.id!r}")
            episodic.Store(
                episodic_pb2.StoreRequest(episode=episodic_pb2.Episode(text="a door closed", source="interop", embedding=unit(9))),
                timeout=RPC_TIMEOUT_S,
            )
            reply = episodic.Query(episodic_pb2.QueryRequest(embedding=unit(5), k=2), timeout=RPC_TIMEOUT_S)
            expect(len(reply.results) == 2, f"{len(reply.results)} results")
            best = reply.results[0]
            expect(best.episode.id == stored.id, f"best {best.episode.id!r}, want {stored.id!r}")
            expect(best.episode.text == "the kettle boiled", f"text {best.episode.text!r}")
            expect(abs(best.score - 1.0) < 1e-3, f"score {best.score}")
            expect(reply.results[0].score >= reply.results[1].score, "results not best first")

        def query_bad_dimension():
            try:
                episodic.Query(episodic_pb2.QueryRequest(embedding=[1.0, 2.0, 3.0], k=3), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{describe_rpc_error(err)}, want INVALID_ARGUMENT")
                fields = bad_request_fields(err)
                expect(fields == ["embedding"], f"BadRequest field violations {fields!r}")
            else:
                raise CheckFailed("Query with a 3-dimensional embedding succeeded")

        tokens = tokens_pb2_grpc.TokensStub(admin_ch)

        def tokens_issue_verify_revoke():
            issued = tokens.Issue(
                tokens_pb2.IssueTokenRequest(
                    principal=AGENT_PRINCIPAL, capabilities=["vision.*"], ttl_seconds=600
                ),
                timeout=RPC_TIMEOUT_S,
            )
            expect(issued.token.startswith("bst1."), f"token {issued.token[:12]!r}...")
            expect(len(issued.id) == 32, f"id {issued.id!r}")
            expect(issued.expires_at.seconds > time.time(), f"expires_at {issued.expires_at}")
            ok = tokens.Verify(
                tokens_pb2.VerifyTokenRequest(token=issued.token, capability="vision.capture"),
                timeout=RPC_TIMEOUT_S,
            )
            expect(ok.valid and ok.reason == "", f"Verify: {ok}")
            expect(ok.principal == AGENT_PRINCIPAL, f"principal {ok.principal!r}")
            wider = tokens.Verify(
                tokens_pb2.VerifyTokenRequest(token=issued.token, capability="web.post"),
                timeout=RPC_TIMEOUT_S,
            )
            expect(not wider.valid and wider.reason.startswith("not_covered"), f"Verify web.post: {wider}")
            tampered = issued.token[:-2] + ("AA" if not issued.token.endswith("AA") else "BB")
            bad = tokens.Verify(tokens_pb2.VerifyTokenRequest(token=tampered), timeout=RPC_TIMEOUT_S)
            expect(not bad.valid and bad.reason.startswith("bad_signature"), f"tampered: {bad}")
            tokens.Revoke(tokens_pb2.RevokeTokenRequest(id=issued.id), timeout=RPC_TIMEOUT_S)
            gone = tokens.Verify(tokens_pb2.VerifyTokenRequest(token=issued.token), timeout=RPC_TIMEOUT_S)
            expect(not gone.valid and gone.reason.startswith("revoked"), f"after Revoke: {gone}")

        def tokens_bad_ttl_invalid_argument():
            try:
                tokens.Issue(
                    tokens_pb2.IssueTokenRequest(principal=AGENT_PRINCIPAL, capabilities=["web.read"]),
                    timeout=RPC_TIMEOUT_S,
                )
            except grpc.RpcError as err:
                expect(
                    err.code() == grpc.StatusCode.INVALID_ARGUMENT,
                    f"{describe_rpc_error(err)}, want INVALID_ARGUMENT",
                )
                fields = bad_request_fields(err)
                expect(fields == ["ttl_seconds"], f"BadRequest field violations {fields!r}")
            else:
                raise CheckFailed("Issue with ttl_seconds=0 succeeded")

        def tokens_ungranted_permission_denied():
            cert, key = daemon.issue_cert("tokens-reader")
            with secure_channel(addr, ca, cert, key) as ch:
                try:
                    tokens_pb2_grpc.TokensStub(ch).Verify(
                        tokens_pb2.VerifyTokenRequest(token="bst1.k1.x.y"), timeout=RPC_TIMEOUT_S
                    )
                except grpc.RpcError as err:
                    expect(
                        err.code() == grpc.StatusCode.PERMISSION_DENIED,
                        f"{describe_rpc_error(err)}, want PERMISSION_DENIED",
                    )
                else:
                    raise CheckFailed("Tokens.Verify succeeded for a principal without tokens.verify")

        policy = policy_pb2_grpc.PolicyStub(admin_ch)

        def policy_check_contract():
            ctx = struct_pb2.Struct()
            ctx.update({"hour": 10, "source": "interop"})
            post = policy.Check(
                policy_pb2.CheckRequest(action="web.post", resource="https://example.org", context=ctx),
                timeout=RPC_TIMEOUT_S,
            )
            expect(not post.allowed, f"web.post allowed: {post}")
            expect(list(post.reasons) == ["forbid-web-post"], f"reasons {list(post.reasons)!r}")
            expect(len(post.decision_id) == 20, f"decision_id {post.decision_id!r}")
            capture = policy.Check(policy_pb2.CheckRequest(action="vision.capture"), timeout=RPC_TIMEOUT_S)
            expect(capture.allowed, f"vision.capture denied: {capture}")
            expect(list(capture.reasons) == ["permit-vision-capture"], f"reasons {list(capture.reasons)!r}")
            unknown = policy.Check(policy_pb2.CheckRequest(action="net.scan"), timeout=RPC_TIMEOUT_S)
            expect(not unknown.allowed and list(unknown.reasons) == ["unknown-action"], f"default deny, marked unknown: {unknown}")
            declared = policy.Check(policy_pb2.CheckRequest(action="secrets.read"), timeout=RPC_TIMEOUT_S)
            expect(not declared.allowed and not declared.reasons, f"declared but unpermitted: {declared}")

        def policy_float_context_invalid_argument():
            ctx = struct_pb2.Struct()
            ctx.update({"ratio": 0.5})
            try:
                policy.Check(policy_pb2.CheckRequest(action="web.read", context=ctx), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{describe_rpc_error(err)}")
                fields = bad_request_fields(err)
                expect(fields == ["context.ratio"], f"BadRequest field violations {fields!r}")
            else:
                raise CheckFailed("Check with a float in the context succeeded")

        def policy_ungranted_permission_denied():
            cert, key = daemon.issue_cert("policy-stranger")
            with secure_channel(addr, ca, cert, key) as ch:
                try:
                    policy_pb2_grpc.PolicyStub(ch).Check(
                        policy_pb2.CheckRequest(action="web.read"), timeout=RPC_TIMEOUT_S
                    )
                except grpc.RpcError as err:
                    expect(
                        err.code() == grpc.StatusCode.PERMISSION_DENIED,
                        f"{describe_rpc_error(err)}, want PERMISSION_DENIED",
                    )
                else:
                    raise CheckFailed("Policy.Check succeeded for a principal without policy.check")

        results.run("health", health)
        results.run("whoami_admin", whoami_admin)
        results.run("ping_echo", ping_echo)
        results.run("get_status_admin", status_admin)
        results.run("reader_cn_permission_denied", reader)
        results.run("san_uri_principal", san_uri)
        results.run("ping_invalid_argument_details", invalid_argument)
        results.run("reflection_lists_services", reflection)
        results.run("no_client_cert_rejected", no_client_cert)
        results.run("supervisor_list_actors", list_actors)
        results.run("supervisor_restart_actor", restart_actor)
        results.run("supervisor_watch_actors", watch_actors)
        results.run("supervisor_critical_worker_readiness", critical_worker_readiness)
        results.run("undecodable_request_invalid_argument", undecodable_invalid_argument)
        results.run("episodic_store_and_query", store_and_query)
        results.run("episodic_bad_dimension_details", query_bad_dimension)
        results.run("tokens_issue_verify_revoke", tokens_issue_verify_revoke)
        results.run("policy_check_contract", policy_check_contract)
        results.run("policy_float_context_invalid_argument", policy_float_context_invalid_argument)
        results.run("policy_ungranted_permission_denied", policy_ungranted_permission_denied)
        results.run("tokens_bad_ttl_invalid_argument", tokens_bad_ttl_invalid_argument)
        results.run("tokens_ungranted_permission_denied", tokens_ungranted_permission_denied)
        admin_ch.close()

        def sigterm():
            rc = daemon.stop()
            print(f"# notify after SIGTERM: {daemon.drain_notify()!r}", flush=True)
            expect(rc is not None, f"still running {STOP_DEADLINE_S:.0f} s after SIGTERM")
            expect(rc == 0, f"exit code {rc} after SIGTERM; its output:\n{daemon.stderr_text()}")

        results.run("sigterm_clean_exit", sigterm)
        return results.summary()
    finally:
        if daemon is not None:
            daemon.kill()
        if args.keep:
            print(f"# kept {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
