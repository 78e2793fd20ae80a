#!/usr/bin/env python3
"""A scripted CoAP server (aiocoap) for the fieldbridge-coap integration tests.

Usage: aiocoap_server.py PORT [--base N] [--interval S] [--max-age S] [--observables N]

Resources:
  /counter        observable text counter, starts at --base, +1 every --interval, Max-Age --max-age
  /obs/0../obs/N-1 (with --observables N) observable text counters, for the benchmark
  /big            a ~3 KB JSON document (block-wise), {"pad": "...", "value": 42}
  /senml          application/senml+json pack: dev1/temp 21.5, dev1/hum 40
  /senml-cbor     application/senml+cbor pack: dev1/temp 22.5, dev1/hum 41
  /json           application/json {"a": {"b": [1, 2.5]}}
  /setpoint       GET returns the last PUT/POST payload (text); PUT/POST store it (2.04)
Prints "ready" on stdout once listening.
"""
import argparse
import asyncio
import json
import struct
import sys

import aiocoap
import aiocoap.resource as resource


def cbor(v):
    """A minimal CBOR encoder (ints, floats, text, lists, dicts): enough for SenML packs."""
    def head(major, n):
        if n < 24:
            return bytes([major << 5 | n])
        if n < 256:
            return bytes([major << 5 | 24, n])
        if n < 65536:
            return bytes([major << 5 | 25]) + struct.pack(">H", n)
        return bytes([major << 5 | 26]) + struct.pack(">I", n)
    if isinstance(v, bool):
        return bytes([0xF5 if v else 0xF4])
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, float):
        return bytes([0xFB]) + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return head(3, len(b)) + b
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(type(v))


class Counter(resource.ObservableResource):
    def __init__(self, base, interval, max_age):
        super().__init__()
        self.value = base
        self.interval = interval
        self.max_age = max_age

    async def run(self):
        while True:
            await asyncio.sleep(self.interval)
            self.value += 1
            self.updated_state()

    async def render_get(self, request):
        m = aiocoap.Message(payload=str(self.value).encode(), content_format=0)
        m.opt.max_age = self.max_age
        return m


class Static(resource.Resource):
    def __init__(self, payload, cf):
        super().__init__()
        self.payload = payload
        self.cf = cf

    async def render_get(self, request):
        return aiocoap.Message(payload=self.payload, content_format=self.cf)


class Setpoint(resource.Resource):
    def __init__(self):
        super().__init__()
        self.value = b"0"

    async def render_get(self, request):
        return aiocoap.Message(payload=self.value, content_format=0)

    async def render_put(self, request):
        self.value = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_post(self, request):
        return await self.render_put(request)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--base", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--max-age", type=int, default=60)
    ap.add_argument("--observables", type=int, default=0)
    a = ap.parse_args()

    root = resource.Site()
    root.add_resource([".well-known", "core"], resource.WKCResource(root.get_resources_as_linkheader))
    counter = Counter(a.base, a.interval, a.max_age)
    root.add_resource(["counter"], counter)
    counters = [counter]
    for i in range(a.observables):
        c = Counter(i, a.interval, a.max_age)
        root.add_resource(["obs", str(i)], c)
        counters.append(c)
    big = json.dumps({"pad": "x" * 3000, "value": 42}).encode()
    root.add_resource(["big"], Static(big, 50))
    senml = [{"bn": "dev1/", "n": "temp", "v": 21.5, "u": "Cel"}, {"n": "hum", "v": 40}]
    root.add_resource(["senml"], Static(json.dumps(senml).encode(), 110))
    senml_cbor = [{-2: "dev1/", 0: "temp", 2: 22.5}, {0: "hum", 2: 41}]
    root.add_resource(["senml-cbor"], Static(cbor(senml_cbor), 112))
    root.add_resource(["json"], Static(json.dumps({"a": {"b": [1, 2.5]}}).encode(), 50))
    root.add_resource(["setpoint"], Setpoint())

    # UDP only: the default transports also listen on TCP (and WebSocket) at the same port number, which the
    # test picked as a free UDP port only, so a TCP socket elsewhere on the machine could make the bind fail.
    await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", a.port), transports=["udp6"])
    for c in counters:
        asyncio.get_running_loop().create_task(c.run())
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
