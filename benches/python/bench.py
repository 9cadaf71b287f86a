"""Runs the scenarios against the Python service and prints one JSON line of results."""
import json
import os
import sys
import time

import benchsvc
from tchu_tchu import TchuClient

N_PUBLISH = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
N_E2E = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
N_RPC = int(sys.argv[3]) if len(sys.argv) > 3 else 200

client = TchuClient(benchsvc.app)
payload = "x" * 80

# Publish throughput (tchu-tchu publishes one message at a time, without confirms).
start = time.perf_counter()
for seq in range(N_PUBLISH):
    client.publish("pybench.nobody", {"seq": seq, "payload": payload})
publish = N_PUBLISH / (time.perf_counter() - start)

# End to end: publish, the worker's dispatcher runs the handler (a second Celery task in 3.x).
open(benchsvc.COUNT_FILE, "w").close()
start = time.perf_counter()
for seq in range(N_E2E):
    client.publish("pybench.e2e", {"seq": seq, "payload": payload})
deadline = time.time() + 600
while os.path.getsize(benchsvc.COUNT_FILE) < N_E2E and time.time() < deadline:
    time.sleep(0.01)
e2e = N_E2E / (time.perf_counter() - start)

# RPC, sequential.
lat = []
start = time.perf_counter()
for seq in range(N_RPC):
    t = time.perf_counter()
    client.call("pybench.rpc", {"seq": seq}, timeout=30)
    lat.append(time.perf_counter() - t)
rpc = N_RPC / (time.perf_counter() - start)
lat.sort()
print(json.dumps({
    "publish_per_s": publish,
    "e2e_per_s": e2e,
    "rpc_per_s": rpc,
    "rpc_p50_ms": lat[len(lat) // 2] * 1000,
    "rpc_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
}))
