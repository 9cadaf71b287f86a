"""Python tchu-tchu calls made from the Rust interop tests; prints one JSON line with the outcome."""
import datetime
import decimal
import json
import sys
import uuid

import pysvc
from tchu_tchu import ServerlessClient, TchuClient, TchuEvent


class Charge(TchuEvent):
    topic = "interop.rpc.rs.charge"

    class Meta:
        topic = "interop.rpc.rs.charge"


def outcome(fn):
    try:
        print("PYCLIENT_RESULT " + json.dumps({"ok": fn()}, default=str))
    except Exception as e:  # the tests compare the exact exception and message
        print("PYCLIENT_RESULT " + json.dumps({"error": type(e).__name__, "module": type(e).__module__, "message": str(e)}))


def main():
    cmd, topic = sys.argv[1], sys.argv[2]
    data = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    if cmd == "publish":
        outcome(lambda: TchuClient(pysvc.app).publish(topic, data))
    elif cmd == "serverless":
        def publish():
            with ServerlessClient(pysvc.BROKER) as client:
                client.publish(topic, data)
        outcome(publish)
    elif cmd == "publish_types":
        data.update(
            {
                "name": "Zoë 😀 ünïcode",
                "amount": decimal.Decimal("10.25"),
                "when": datetime.datetime(2026, 11, 29, 12, 30, 5, 123456, tzinfo=datetime.timezone.utc),
                "day": datetime.date(2026, 11, 29),
                "uid": uuid.UUID("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"),
            }
        )
        outcome(lambda: TchuClient(pysvc.app).publish(topic, data))
    elif cmd == "call":
        outcome(lambda: TchuClient(pysvc.app).call(topic, data, timeout=timeout))
    elif cmd == "call_many":
        # Sequential calls, one client: {"count": N, ...} -> the answers (or exception texts).
        def calls():
            client, out = TchuClient(pysvc.app), []
            for i in range(int(data.pop("count"))):
                try:
                    out.append(client.call(topic, dict(data, n=i), timeout=timeout))
                except Exception as e:
                    out.append({"error": type(e).__name__, "message": str(e)})
            return out
        outcome(calls)
    elif cmd == "publish_ledger":
        # {"accounts": A, "entries": E, "broken": [account, seq]}: entry `seq` of every account,
        # round-robin, in publish order; every seventh fails its first run; one always fails.
        def publish():
            client, broken = TchuClient(pysvc.app), data.get("broken")
            for seq in range(int(data["entries"])):
                for a in range(int(data["accounts"])):
                    client.publish(topic, {
                        "account": f"acct-{a}", "seq": seq, "amount": 10,
                        "fail_first": seq % 7 == 3, "broken": [a, seq] == broken,
                    })
            return int(data["entries"]) * int(data["accounts"])
        outcome(publish)
    elif cmd == "event_call":
        def call():
            event = Charge()
            event.serialize_request(data)
            return event.call(timeout=timeout)
        outcome(call)
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main()
