"""A pooled HTTP/1.1 client, as services write them: urllib3's connection pool, which
checks a pooled connection before reusing it (a connection the peer ended is replaced,
not used). `pool` threads share `pool` keep-alive connections (`shared`, the default) or
each keep one of their own (`per-thread`), and send `rate` requests a second in all for
`seconds`. No retries: every failure is reported.

Prints one JSON object: `requests`, each [unix ms at the answer, X-Served-By or null,
status or 0, error or null]. (Count connections at the servers: the pool reconnects a
dropped connection in place.)
"""

import json
import sys
import threading
import time

import urllib3


def main():
    host, port, pool, rate, seconds = sys.argv[1:6]
    shape = sys.argv[6] if len(sys.argv) > 6 else "shared"
    pool, rate, seconds = int(pool), float(rate), float(seconds)

    def make(size):
        return urllib3.HTTPConnectionPool(
            host,
            int(port),
            maxsize=size,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=2.0, read=5.0),
        )

    if shape == "per-thread":
        pools = [make(1) for _ in range(pool)]
    else:
        shared = make(pool)
        pools = [shared] * pool
    results = []
    lock = threading.Lock()
    start = time.time()
    end = start + seconds
    interval = pool / rate

    def worker(i):
        due = start + i * interval / pool
        while True:
            now = time.time()
            if now >= end:
                return
            if due > now:
                time.sleep(due - now)
            try:
                r = pools[i].request("GET", "/", preload_content=True)
                rec = [int(time.time() * 1000), r.headers.get("X-Served-By"), r.status, None]
            except Exception as e:  # every failure is the measurement
                rec = [int(time.time() * 1000), None, 0, type(e).__name__ + ": " + str(e)]
            with lock:
                results.append(rec)
            due += interval

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(pool)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"requests": results}))


main()
