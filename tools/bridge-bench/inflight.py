#!/usr/bin/env python3
"""How many QoS 1 PUBLISH packets each MQTT connection in a capture had in flight at most.

Usage: tcpdump -i lo -s 0 -w cap.pcap tcp & bridge-bench --messages 20000 --rounds 1; kill %1
       python3 tools/bridge-bench/inflight.py cap.pcap

For every TCP flow that carries more than 1,000 PUBLISH packets, the two directions are reassembled, the
PUBLISH packets one way and the PUBACK packets the other are counted per segment in capture order, and the
largest difference is printed, with the Receive Maximum of the CONNACK the flow got (MQTT 5), if any.
Reads classic pcap files (Ethernet or Linux cooked headers, IPv4) with nothing but the standard library.
"""
import collections
import struct
import sys


def segments(path):
    with open(path, "rb") as f:
        head = f.read(24)
        # Classic pcap, little-endian, microsecond or nanosecond stamps (what tcpdump writes here).
        if len(head) < 24 or head[:4] not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            sys.exit(f"{path}: not a little-endian pcap file (pcapng is not read: tcpdump -w writes pcap)")
        nanos = head[:4] == b"\x4d\x3c\xb2\xa1"
        link = struct.unpack("<I", head[20:24])[0]
        offset = {1: 14, 113: 16}.get(link, 0)
        seen = set()
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            ts, frac, incl, orig = struct.unpack("<IIII", h)
            if incl < orig:
                sys.exit(f"{path}: packets cut at {incl} bytes; capture whole packets (tcpdump -s 0)")
            data = f.read(incl)
            if len(data) < incl:
                return  # a capture cut short: the last record is incomplete
            ip = data[offset:]
            if not ip or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            if ip[9] != 6 or len(tcp) < 20:
                continue  # not TCP, or cut inside the TCP header
            sport, dport, seq = struct.unpack(">HHI", tcp[:8])
            payload = tcp[(tcp[12] >> 4) * 4 : total - ihl]
            # Loopback captures show each segment twice.
            if payload and (sport, dport, seq) not in seen:
                seen.add((sport, dport, seq))
                yield ts + frac / (1e9 if nanos else 1e6), sport, dport, seq, payload


def varint(buf, j):
    """(value, next index) of the variable byte integer at buf[j], or None if it is incomplete."""
    mult = value = 0
    while j < len(buf):
        b = buf[j]
        value += (b & 127) << mult
        mult += 7
        j += 1
        if b < 128:
            return value, j
    return None


def packets(buf):
    """The complete MQTT packets (type, bytes) at the start of buf, and how many bytes they take."""
    out, i = [], 0
    while i + 2 <= len(buf):
        v = varint(buf, i + 1)
        if v is None or v[1] + v[0] > len(buf):
            break
        end = v[1] + v[0]
        out.append((buf[i] >> 4, buf[i:end]))
        i = end
    return out, i


# Sizes of the CONNACK properties (MQTT 5, 3.1.2.11): fixed ones in bytes, "s" a length-prefixed string or
# binary, "p" a string pair.
CONNACK_PROPERTY = {0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1, 0x13: 2,
                    0x22: 2, 0x12: "s", 0x1A: "s", 0x1C: "s", 0x15: "s", 0x16: "s", 0x1F: "s", 0x26: "p"}


def receive_maximum(connack):
    """The Receive Maximum property of an MQTT 5 CONNACK, or None (also for a malformed one)."""
    try:
        return _receive_maximum(connack)
    except (TypeError, struct.error, IndexError):
        return None


def _receive_maximum(connack):
    _, j = varint(connack, 1)
    j += 2  # flags, reason code
    if j >= len(connack):
        return None  # MQTT 3.1.1: no properties
    length, j = varint(connack, j)
    end = j + length
    while j < end:
        kind, j = varint(connack, j)
        size = CONNACK_PROPERTY.get(kind)
        if size is None:
            return None
        if kind == 0x21:
            return struct.unpack(">H", connack[j : j + 2])[0]
        if size == "s":
            j += 2 + struct.unpack(">H", connack[j : j + 2])[0]
        elif size == "p":
            for _ in range(2):
                j += 2 + struct.unpack(">H", connack[j : j + 2])[0]
        else:
            j += size
    return None


def main(path):
    segs = list(segments(path))
    flows = collections.defaultdict(list)
    for s in segs:
        flows[(s[1], s[2])].append(s)
    for (a, b), fwd in flows.items():
        events, rm = [], None
        for direction, flow in (("pub", fwd), ("ack", flows.get((b, a), []))):
            buf = b""
            for ts, _, _, _, payload in sorted(flow, key=lambda s: s[3]):
                buf += payload
                found, used = packets(buf)
                buf = buf[used:]
                count = 0
                for kind, raw in found:
                    if direction == "pub" and kind == 3 and (raw[0] >> 1) & 3 == 1:
                        count += 1
                    elif direction == "ack" and kind == 4:
                        count += 1
                    elif direction == "ack" and kind == 2:
                        rm = receive_maximum(raw)
                events.append((ts, direction, count))
        events.sort(key=lambda e: e[0])
        inflight = peak = total = 0
        for _, direction, count in events:
            inflight += count if direction == "pub" else -count
            total += count if direction == "pub" else 0
            peak = max(peak, inflight)
        if total > 1000:
            limit = "none" if rm is None else rm
            print(f"127.0.0.1:{a} -> :{b}: {total} QoS 1 PUBLISH, at most {peak} in flight, Receive Maximum {limit}")


if __name__ == "__main__":
    main(sys.argv[1])
