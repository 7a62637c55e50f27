"""Online learning from Python: send feedback events, re-send them safely, predict, read the stats.

    python3 client/python/examples/learning.py [EVENTS]

Sends EVENTS (default 200) labelled points of a simple rule (class 1 when x + y > 0) with an
event_id each, then sends the first ten again: the daemon answers those `duplicate = true` and does
not learn them twice, which is what makes re-sending anything whose reply was lost safe. While the
learning queue is full the daemon answers RESOURCE_EXHAUSTED with a retry delay; the script waits
that long and sends again. It connects like every client (BRAINSTEM_* variables, else
./.brainstem-dev; docs/CLIENTS.md) and needs learning.write and learning.read. The model's dimension
is fixed by the first event it ever accepted (or learning.feature_dimension): this script sends 2.
"""

from __future__ import annotations

import random
import sys
import time
import uuid

import brainstem


def send(bs, features, label, event_id):
    while True:
        try:
            return bs.learning.feedback(features=features, label=label, event_id=event_id)
        except brainstem.errors.RateLimited as err:  # the learning queue is full: back off
            time.sleep(err.retry_delay or 0.2)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    run = uuid.uuid4().hex[:8]
    rng = random.Random(7)
    bs = brainstem.connect()

    events = []
    for i in range(count):
        x, y = rng.uniform(-1, 1), rng.uniform(-1, 1)
        events.append(([x, y], 1.0 if x + y > 0 else 0.0, f"example-{run}-{i}"))

    accepted = sum(send(bs, f, label, eid).accepted for f, label, eid in events)
    # Feedback is IDEMPOTENT: a repeat changes nothing and is answered as a duplicate.
    repeats = sum(send(bs, f, label, eid).duplicate for f, label, eid in events[:10])
    print(f"accepted {accepted} of {count}; {repeats} of 10 repeats answered as duplicates")

    for point in ([0.8, 0.5], [-0.7, -0.2]):
        reply = bs.learning.predict(features=point)
        print(f"P(class 1 | {point}) = {reply.score:.3f} after {reply.events_learned} events")

    stats = bs.learning.get_stats()
    accuracy = f"{stats.prequential_accuracy:.1%}" if stats.HasField("prequential_accuracy") else "-"
    print(
        f"learned {stats.events_learned}, duplicates {stats.duplicates}, pending {stats.pending}, "
        f"paused {stats.paused}, prequential accuracy {accuracy}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
