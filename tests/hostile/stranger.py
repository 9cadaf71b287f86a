"""A stranger publishing with a generic AMQP client (pika): frames lapin's parser refuses.

Usage: stranger.py CASE QUEUE BROKER_URL [TOPIC_PREFIX]. Publishes one message straight into
QUEUE (or, for utf8_routing_key, to tchu_events under a routing key that is not UTF-8 but
matches the service's `<TOPIC_PREFIX>.*` binding; the prefix defaults to `hostile`).
Prints "published CASE", or "refused CASE: <why>" (exit 3) when the broker refuses the publish
itself.
"""
import struct
import sys

import pika
import pika.data

CASE, QUEUE, URL = sys.argv[1], sys.argv[2], sys.argv[3]
PREFIX = sys.argv[4].encode() if len(sys.argv) > 4 else b"hostile"
BODY = b'{"n": 1}'


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


class Unknown:
    """A header value pika writes with a field type AMQP does not define ('Z')."""


def encode_with_unknown(original):
    def encode_value(pieces, value):
        if isinstance(value, Unknown):
            pieces.append(struct.pack(">cI", b"Z", 7))
            return 5
        return original(pieces, value)
    return encode_value


def main():
    props = pika.BasicProperties(content_type="application/json")
    exchange, routing_key = "", QUEUE
    if CASE == "utf8_content_type":
        # pika writes bytes as they are: not UTF-8, in an AMQP short string.
        props = pika.BasicProperties(content_type=b"application/\xff\xfejson")
    elif CASE == "utf8_header_key":
        props = pika.BasicProperties(headers={b"x-\xc3\x28": 1, "ok": 1})
    elif CASE == "deep_headers":
        sys.setrecursionlimit(100000)
        props = pika.BasicProperties(headers={"x-deep": nested(2500)})
    elif CASE == "unknown_type":
        pika.data.encode_value = encode_with_unknown(pika.data.encode_value)
        props = pika.BasicProperties(headers={"ok": 1, "x-odd": Unknown()})
    elif CASE == "utf8_routing_key":
        exchange, routing_key = "tchu_events", PREFIX + b".\xff\xfe"
    else:
        raise SystemExit("unknown case " + CASE)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish(exchange=exchange, routing_key=routing_key, body=BODY, properties=props)
    except pika.exceptions.AMQPError as e:
        print("refused", CASE + ":", repr(e))
        sys.exit(3)
    conn.close()
    print("published", CASE)


if __name__ == "__main__":
    main()
