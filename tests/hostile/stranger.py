"""A stranger publishing with a generic AMQP client (pika): frames tchu's parser used to fail on.

Usage: stranger.py CASE QUEUE BROKER_URL. Publishes one message straight into QUEUE.
"""
import sys

import pika

CASE, QUEUE, URL = sys.argv[1], sys.argv[2], sys.argv[3]
BODY = b'{"n": 1}'


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def main():
    props = pika.BasicProperties(content_type="application/json")
    if CASE == "utf8_content_type":
        # pika writes bytes as they are: not UTF-8, in an AMQP short string.
        props = pika.BasicProperties(content_type=b"application/\xff\xfejson")
    elif CASE == "utf8_header_key":
        props = pika.BasicProperties(headers={b"x-\xc3\x28": 1, "ok": 1})
    elif CASE == "deep_headers":
        sys.setrecursionlimit(100000)
        props = pika.BasicProperties(headers={"x-deep": nested(2500)})
    else:
        raise SystemExit("unknown case " + CASE)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=QUEUE, body=BODY, properties=props)
    conn.close()
    print("published", CASE)


if __name__ == "__main__":
    main()
