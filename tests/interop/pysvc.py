"""A small Python tchu-tchu service (3.0.4 or 2.4.0), the interoperability tests' counterpart.

Run as a Celery worker by tests/python/mod.rs. Every handler appends what it received to the
JSON-lines file named by PYSVC_RECORD, so the Rust tests can check it.
"""
import json
import os
import time

from celery import Celery
from kombu import Connection, Exchange, Queue

from tchu_tchu import TchuClient, TchuEvent, TchuRPCException, setup_celery_queue, subscribe

BROKER = os.environ.get("PYSVC_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("PYSVC_QUEUE", "tchu_interop_py")
RECORD = os.environ.get("PYSVC_RECORD", "/tmp/pysvc-record.jsonl")

# Every key the Python service subscribes to, plus one nobody handles (for `no_handlers`).
KEYS = [
    "interop.py.event",
    "interop.py.tchuevent",
    "interop.wild.*",
    "interop.deep.#",
    "interop.fanout",
    "interop.types",
    "interop.rpc.py.echo",
    "interop.rpc.py.fail",
    "interop.rpc.py.slow",
    "interop.rpc.py.charge",
    "interop.rpc.py.orphan",
    "interop.rpc.both",
    "interop.pywatch.*",
    "interop.pyhash.#",
    "partition.tick",
]

# PYSVC_QUORUM=1: the queue is a quorum queue, as a deployment that must ride out a node's loss
# declares it (the partition tests); Celery is told so, or its own declaration would conflict.
QUORUM = os.environ.get("PYSVC_QUORUM", "0") == "1"
QUEUE_ARGUMENTS = {"x-queue-type": "quorum"} if QUORUM else None

app = Celery("pysvc", broker=BROKER, backend="rpc://")
setup_celery_queue(app, QUEUE, subscriber_modules=[])
if QUORUM:
    app.conf.task_queues = (
        Queue(
            QUEUE,
            exchange=Exchange("tchu_events", type="topic", durable=True),
            routing_key=QUEUE,
            durable=True,
            queue_arguments=QUEUE_ARGUMENTS,
        ),
    )
app.conf.task_track_started = True  # so callers see STARTED metas before the result
app.conf.broker_connection_retry_on_startup = True


def wait_idle(conn, names, limit=20.0):
    """Waits until no worker consumes any of the queues `names` (absent ones are idle).

    The interop suites of the two tchu-tchu releases bind their services' queues to the same
    keys: a worker of one suite still stopping would answer the other suite's calls.
    """
    deadline = time.time() + limit
    for name in filter(None, names):
        while True:
            channel = conn.channel()
            try:
                _, _, consumers = channel.queue_declare(queue=name, passive=True)
            except Exception:  # NOT_FOUND: nobody can consume it
                consumers = 0
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
            if consumers == 0:
                break
            if time.time() > deadline:
                raise SystemExit("queue %s still has %d consumers after %.0f s" % (name, consumers, limit))
            time.sleep(0.2)


def bind():
    """Declares the queue and its bindings by hand.

    Workaround for tchu-tchu's bug B1 (docs/wire.md section 4): in 3.0.2-3.0.4
    `setup_celery_queue` defers binding to signal receivers that are garbage-collected, so the
    service queue would only ever be bound to its own name.
    """
    exchange = Exchange("tchu_events", type="topic", durable=True)
    with Connection(BROKER) as conn:
        queue = Queue(
            QUEUE,
            exchange=exchange,
            routing_key=QUEUE,
            durable=True,
            auto_delete=False,
            queue_arguments=QUEUE_ARGUMENTS,
        )(conn)
        queue.declare()
        if os.environ.get("PYSVC_PURGE", "1") == "1":
            queue.purge()  # leftovers of an earlier run would only confuse this one
        extra = [k for k in os.environ.get("PYSVC_EXTRA_KEYS", "").split(",") if k]
        for key in KEYS + extra:
            queue.bind_to(exchange=exchange, routing_key=key)
        wait_idle(conn, os.environ.get("PYSVC_IDLE_QUEUES", "").split(","))


def record(kind, data):
    with open(RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "data": data}, ensure_ascii=False, default=str) + "\n")


@subscribe("interop.py.event")
def on_event(data):
    record("py.event", data)


@subscribe("payment.charge")
def on_payment_charge(data):
    """The payment service of the order saga (tests/saga.rs): bound only with
    PYSVC_EXTRA_KEYS=payment.charge. Declines amounts over 1000.00."""
    record("payment.charge", data)
    order_id = data.get("order_id")
    client = TchuClient(app)
    if data.get("cents", 0) > 100000:
        client.publish("payment.failed", {"order_id": order_id, "reason": "card declined"})
    else:
        client.publish("payment.charged", {"order_id": order_id})


@subscribe("partition.tick")
def on_partition_tick(data):
    record("partition.tick", data)


@subscribe("interop.wild.*")
def on_wild(data):
    record("py.wild", data)


@subscribe("interop.deep.#")
def on_deep(data):
    # tchu-tchu's local matcher treats `#` literally (bug B3): this never runs for
    # `interop.deep.a.b`, although the broker delivers the message.
    record("py.deep", data)


@subscribe("interop.fanout")
def on_fanout(data):
    record("py.fanout", data)


@subscribe("interop.types")
def on_types(data):
    record("py.types", data)


@subscribe("interop.rpc.py.echo")
def rpc_echo(data):
    return {"echo": data}


@subscribe("interop.rpc.py.fail")
def rpc_fail(data):
    raise ValueError("python handler failed on %s" % data.get("n"))


@subscribe("interop.rpc.py.slow")
def rpc_slow(data):
    time.sleep(float(data.get("sleep", 2)))
    return {"slept": data.get("sleep", 2)}


@subscribe("interop.rpc.both")
def rpc_both(data):
    record("py.both", data)
    return {"from": "python", "n": data.get("n")}


@subscribe("interop.pywatch.*")
def py_observer(data):
    # An audit log on RPC topics: returns None, so tchu-tchu's dispatcher answers every request
    # it sees with a `null` result entry.
    record("py.observer", data)


@subscribe("interop.pyhash.#")
def py_hash_observer(data):
    # Never runs: tchu-tchu's local matcher takes `#` literally (B3), so its dispatcher answers
    # every request the broker routes here with `no_handlers`.
    record("py.hash", data)


@subscribe("interop.pywatch.echo")
def py_watch_echo(data):
    return {"echo": data}


class Broadcast(TchuEvent):
    topic = "interop.py.tchuevent"

    class Meta:
        topic = "interop.py.tchuevent"


def on_broadcast(event):
    record("py.tchuevent", {"validated": event.validated_data, "authorized": event.is_authorized()})


Broadcast(handler=on_broadcast).subscribe()


class Charge(TchuEvent):
    # A class attribute `topic`, not only Meta.topic: tchu-tchu 3.x needs it to convert a
    # TchuRPCException into its error dict (bug B6).
    topic = "interop.rpc.py.charge"

    class Meta:
        topic = "interop.rpc.py.charge"


def on_charge(event):
    amount = event.validated_data.get("amount", 0)
    if amount < 0:
        raise TchuRPCException("negative amount", code="NEGATIVE_AMOUNT", details={"amount": amount})
    return {"charged": amount}


Charge(handler=on_charge).subscribe()
