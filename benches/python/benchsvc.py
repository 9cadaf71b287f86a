"""The Python tchu-tchu 3.0.4 side of the benchmarks: a Celery service and its scenarios."""
import os

from celery import Celery
from kombu import Connection, Exchange, Queue

from tchu_tchu import setup_celery_queue, subscribe

BROKER = os.environ.get("PYBENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = "tchu_pybench"
COUNT_FILE = os.environ.get("PYBENCH_COUNT", "/tmp/pybench-count")

app = Celery("benchsvc", broker=BROKER, backend="rpc://")
setup_celery_queue(app, QUEUE, subscriber_modules=[])


def bind():
    # tchu-tchu 3.0.2-3.0.4 never binds its queue (bug B1): bind by hand.
    exchange = Exchange("tchu_events", type="topic", durable=True)
    with Connection(BROKER) as conn:
        q = Queue(QUEUE, exchange=exchange, routing_key=QUEUE, durable=True)(conn)
        q.declare()
        q.purge()
        for key in ["pybench.e2e", "pybench.rpc"]:
            q.bind_to(exchange=exchange, routing_key=key)


@subscribe("pybench.e2e")
def on_event(data):
    with open(COUNT_FILE, "a") as f:
        f.write("x")


@subscribe("pybench.rpc")
def on_call(data):
    return {"seq": data.get("seq")}
