"""One paho-mqtt publisher sending a burst of QoS 1 messages with 100 in flight, as a PLC gateway or a
Node-RED flow does. Usage: paho_burst.py PORT COUNT TOPIC_PREFIX [VERSION(311|5)]

Prints `ACKED n SECONDS` once every message is acknowledged, then exits 0. Bounded: if acknowledgments stop
coming for 30 s it prints `STUCK acked/count` and exits 1.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
count = int(sys.argv[2])
prefix = sys.argv[3]
v5 = len(sys.argv) > 4 and sys.argv[4] == "5"

acked = 0
failed = 0
cond = threading.Condition()


def on_publish(client, userdata, mid, reason_code, properties):
    global acked, failed
    with cond:
        acked += 1
        if reason_code is not None and getattr(reason_code, "is_failure", False):
            failed += 1
        cond.notify_all()


c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-burst",
                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
c.max_inflight_messages_set(100)
c.on_publish = on_publish
c.connect("127.0.0.1", port, keepalive=60)
c.loop_start()
start = time.monotonic()
for i in range(count):
    c.publish(f"{prefix}/{i % 10}", f"{i}", qos=1)
last, last_change = -1, time.monotonic()
with cond:
    while acked < count:
        if acked != last:
            last, last_change = acked, time.monotonic()
        if time.monotonic() - last_change > 30:
            print(f"STUCK {acked}/{count}", flush=True)
            sys.exit(1)
        cond.wait(1.0)
elapsed = time.monotonic() - start
print(f"ACKED {acked} {elapsed:.3f} FAILED {failed}", flush=True)
c.disconnect()
c.loop_stop()
