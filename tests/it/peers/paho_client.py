"""A paho-mqtt client scenario against the broker under test.

Usage: paho_client.py PORT VERSION(311|5)
Runs a fixed scenario and prints one line per observation, e.g. `RECV t/q1 1 hello`, then `DONE`.
The Rust test asserts on those lines. Every wait is bounded; on a timeout it prints `TIMEOUT what` and exits 1.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

port = int(sys.argv[1])
v5 = sys.argv[2] == "5"
proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
tag = "v5" if v5 else "v311"

received = []
cond = threading.Condition()


def out(*parts):
    print(*parts, flush=True)


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    with cond:
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                out("TIMEOUT", what)
                sys.exit(1)
            cond.wait(left)


def on_message(client, userdata, msg):
    with cond:
        received.append(msg)
        cond.notify_all()


def make(client_id):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    c.on_message = on_message
    return c


def connect(c, **kw):
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        out("CONNACK", c._client_id.decode(), str(reason_code))
        connected.set()

    c.on_connect = on_connect
    if v5:
        c.connect("127.0.0.1", port, keepalive=30, clean_start=True, **kw)
    else:
        c.connect("127.0.0.1", port, keepalive=30, **kw)
    c.loop_start()
    if not connected.wait(10):
        out("TIMEOUT connect")
        sys.exit(1)


sub = make(f"paho-sub-{tag}")
connect(sub)
subscribed = threading.Event()
sub.on_subscribe = lambda *a: subscribed.set()
sub.subscribe([(f"paho/{tag}/#", 2)])
if not subscribed.wait(10):
    out("TIMEOUT subscribe")
    sys.exit(1)

pub = make(f"paho-pub-{tag}")
connect(pub)
for qos in (0, 1, 2):
    info = pub.publish(f"paho/{tag}/q{qos}", f"hello{qos}", qos=qos)
    info.wait_for_publish(10)
if v5:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("site", "plant-a")]
    props.ResponseTopic = f"paho/{tag}/reply"
    props.CorrelationData = b"corr-1"
    props.ContentType = "text/plain"
    pub.publish(f"paho/{tag}/props", "with-props", qos=1, properties=props).wait_for_publish(10)
pub.publish(f"paho/{tag}/retained", "kept", qos=1, retain=True).wait_for_publish(10)

expected = 5 if v5 else 4
wait_for(lambda: len(received) >= expected, "live messages")
for m in received[:expected]:
    line = ["RECV", m.topic, str(m.qos), m.payload.decode()]
    if v5 and m.properties is not None and hasattr(m.properties, "UserProperty"):
        line.append("user=" + ",".join(f"{k}={v}" for k, v in m.properties.UserProperty))
        line.append("response=" + getattr(m.properties, "ResponseTopic", ""))
        line.append("corr=" + getattr(m.properties, "CorrelationData", b"").decode())
        line.append("ctype=" + getattr(m.properties, "ContentType", ""))
    out(*line)

# A late subscriber gets the retained message with the retain flag.
late = make(f"paho-late-{tag}")
connect(late)
late.subscribe(f"paho/{tag}/retained", qos=1)
wait_for(lambda: any(m.topic.endswith("/retained") and m.retain for m in received), "retained")
out("RETAINED", "ok")

# A client with a will that vanishes without DISCONNECT.
willer = make(f"paho-will-{tag}")
willer.will_set(f"paho/{tag}/will", "offline", qos=1, retain=False)
connect(willer)
willer.loop_stop()
willer.socket().close()
wait_for(lambda: any(m.topic.endswith("/will") for m in received), "will")
out("WILL", "ok")

for c in (sub, pub, late):
    c.disconnect()
    c.loop_stop()
out("DONE")
