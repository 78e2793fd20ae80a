#!/usr/bin/env python3
"""A Modbus device for fieldbridge's tests, on pymodbus (3.16+ SimDevice API).

Serves a register image over Modbus TCP, RTU over TCP, or RTU on a serial port / pty, and lets the test
inspect it:

  stdout  READY <port>                       once listening (port 0 for serial)
          REQ unit=U fc=F addr=A count=C     for every request received (count the requests a poll made)
          VAL v1 v2 ...  /  OK  /  ERR msg   answers to stdin commands
  stdin   get UNIT TABLE ADDR COUNT          read server memory (TABLE: co, di, hr, ir)
          set UNIT TABLE ADDR V1 [V2 ...]    change server memory (values: ints, or 0/1 for bits)
          ping                               answers PONG after logging every request received so far
          quit

The image is JSON: {"UNIT": {"co": {"ADDR": [values...]}, "di": {...}, "hr": {...}, "ir": {...}}}.
Addresses are 0-based protocol offsets. `--ignore-writes UNIT:ADDR` makes writes to those holding registers
succeed on the wire without changing them (to test read-back verification). Addresses outside the given blocks answer IllegalDataAddress
(except that bit blocks are padded to multiples of 16 by pymodbus). A unit not in the image gets no answer
on a serial line and a GatewayTargetDevice-style exception over TCP.
"""
import argparse
import asyncio
import json
import sys

try:
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as exc:  # the Rust side turns this into a clear test failure
    print(f"FATAL pymodbus is not installed or too old (need 3.16+ with pymodbus.simulator): {exc}", flush=True)
    sys.exit(3)

TABLES = {"co": 1, "di": 2, "hr": 3, "ir": 4}
# Placeholder blocks for tables a unit does not define: pymodbus wants all four, and these addresses are
# never used by the tests.
UNUSED_BITS = 65504
UNUSED_REG = 65000


def blocks(spec, bits):
    out = []
    for addr, values in sorted(((int(a), v) for a, v in (spec or {}).items())):
        if bits:
            out.append(SimData(addr, values=[bool(v) for v in values], datatype=DataType.BITS))
        else:
            out.append(SimData(addr, values=[int(v) & 0xFFFF for v in values], datatype=DataType.REGISTERS))
    if not out:
        if bits:
            out.append(SimData(UNUSED_BITS, values=[False] * 16, datatype=DataType.BITS))
        else:
            out.append(SimData(UNUSED_REG, values=[0], datatype=DataType.REGISTERS))
    return out


def ignoring(addresses):
    """A device action that silently keeps the old value of the given holding registers on FC6/FC16 writes
    (a device that clamps or refuses a setpoint without an exception: what read-back verification is for)."""

    async def action(func_code, start_address, address, count, registers, set_values):
        if set_values is not None and func_code in (6, 16):
            for i in range(count):
                if address + i in addresses:
                    set_values[i] = registers[address + i - start_address]
        return None

    return action


def devices(image, ignore):
    devs = []
    for unit, tables in image.items():
        devs.append(
            SimDevice(
                id=int(unit),
                simdata=(
                    blocks(tables.get("co"), True),
                    blocks(tables.get("di"), True),
                    blocks(tables.get("hr"), False),
                    blocks(tables.get("ir"), False),
                ),
                action=ignoring(ignore[int(unit)]) if int(unit) in ignore else None,
            )
        )
    return devs


def trace_pdu(sending, pdu):
    if not sending:
        print(
            f"REQ unit={pdu.dev_id} fc={pdu.function_code} addr={getattr(pdu, 'address', 0)} "
            f"count={getattr(pdu, 'count', 0)}",
            flush=True,
        )
    return pdu


async def commands(server):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        parts = line.decode().split()
        if not parts:
            continue
        try:
            if parts[0] == "quit":
                return
            if parts[0] == "ping":
                # A barrier: every request received before this line has been logged above it.
                print("PONG", flush=True)
                continue
            if parts[0] == "get":
                unit, table, addr, count = int(parts[1]), parts[2], int(parts[3]), int(parts[4])
                values = await server.async_getValues(unit, TABLES[table], addr, count)
                print("VAL " + " ".join(str(int(v)) for v in values[:count]), flush=True)
            elif parts[0] == "set":
                unit, table, addr = int(parts[1]), parts[2], int(parts[3])
                values = [int(v) for v in parts[4:]]
                if TABLES[table] in (1, 2):
                    values = [bool(v) for v in values]
                await server.async_setValues(unit, TABLES[table], addr, values)
                print("OK", flush=True)
            else:
                print(f"ERR unknown command {parts[0]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report anything to the test
            print(f"ERR {type(exc).__name__}: {exc}", flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True, help="JSON text, or @file")
    ap.add_argument("--host", default="127.0.0.1")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tcp", type=int, metavar="PORT")
    mode.add_argument("--rtu-over-tcp", type=int, metavar="PORT")
    mode.add_argument("--serial", metavar="PATH")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--parity", default="N")
    ap.add_argument("--stopbits", type=int, default=1)
    ap.add_argument(
        "--ignore-writes",
        action="append",
        default=[],
        metavar="UNIT:ADDR[,ADDR...]",
        help="holding registers whose writes are acknowledged but not applied",
    )
    args = ap.parse_args()
    ignore = {}
    for spec in args.ignore_writes:
        unit, addrs = spec.split(":")
        ignore.setdefault(int(unit), set()).update(int(a) for a in addrs.split(","))

    text = args.image
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    devs = devices(json.loads(text), ignore)

    if args.serial:
        server = ModbusSerialServer(
            devs,
            framer=FramerType.RTU,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
            trace_pdu=trace_pdu,
        )
    else:
        port = args.tcp if args.tcp is not None else args.rtu_over_tcp
        framer = FramerType.SOCKET if args.tcp is not None else FramerType.RTU
        server = ModbusTcpServer(devs, framer=framer, address=(args.host, port), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    bound = 0
    sockets = getattr(server.transport, "sockets", None)
    if sockets:
        bound = sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await commands(server)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
