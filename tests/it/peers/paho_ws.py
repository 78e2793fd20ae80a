"""Publish and receive one message over MQTT-over-WebSocket with paho-mqtt.

Usage: paho_ws.py PORT PATH [CAFILE]   (with CAFILE: secure WebSocket, verifying the server against it)
Prints `GOT <topic> <payload>` and exits 0, or `TIMEOUT ...` and exits 1.
"""
import sys
import threading

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
path = sys.argv[2]
cafile = sys.argv[3] if len(sys.argv) > 3 else None

got = threading.Event()
connected = threading.Event()
subscribed = threading.Event()


def on_message(client, userdata, msg):
    print("GOT", msg.topic, msg.payload.decode(), flush=True)
    got.set()


c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets", protocol=mqtt.MQTTv311)
c.ws_set_options(path=path)
if cafile:
    c.tls_set(ca_certs=cafile)
c.on_message = on_message
c.on_connect = lambda *a: connected.set()
c.on_subscribe = lambda *a: subscribed.set()
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
for ev, what in ((connected, "connect"), (subscribed, "subscribe")):
    if not ev.wait(10):
        print("TIMEOUT", what, flush=True)
        sys.exit(1)
    if ev is connected:
        c.subscribe("ws/#", qos=1)
c.publish("ws/hello", "over-websocket", qos=1).wait_for_publish(10)
if not got.wait(10):
    print("TIMEOUT message", flush=True)
    sys.exit(1)
c.disconnect()
c.loop_stop()
