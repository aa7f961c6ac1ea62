"""Downstream fan-out to ``WS /v1/stream`` clients from a real Kafka broker: delivered rate,
latency, memory per connection, a resume storm, and a bare websockets server as the baseline.

Starts its own single-node Kafka broker and a gateway process (loopback only), and client
worker processes (``--workers``, each a share of the connections on the lean client of
:mod:`benchmarks.fanout.rawws`, or with ``--client websockets`` on the ``websockets`` asyncio
client; minimal work per message: frames are scanned, not parsed). Then, after ``--warmup``
seconds of gateway traffic that are not measured (the broker's first seconds serving the
gateway's topic cost it several times the CPU of later ones):

0. Kafka alone, for reference: the updates of the first phase, at its rate, read by a bare
   ``read_committed`` aiokafka consumer with the gateway's fetch settings (on a topic the
   gateway does not consume): Kafka's own share of the latency on this machine;
1. live fan-out, for each ``--connections`` count and each ``--rate``: the connections
   subscribe "from now" to ``--channels`` channels ``inventory:s-<i>`` (spread evenly);
   ``Inventory.Updated`` envelopes, shaped like the gateway's, are produced straight to the
   inventory topic by a bare aiokafka producer at ``--rate`` updates/s for ``--seconds``
   (round-robin over the channels; keys ``s-<i>:SKU-n`` spread over the partitions). Reported:
   updates/s delivered (sum over clients, until the last one arrived), latency from just
   before the produce call to the client's receipt (``event_time`` is the produce wall-clock
   time, in microseconds), the gateway's RSS per connection, the CPU of every process;
2. resume storm (``--storm-clients``): clients subscribe, keep their cursor and disconnect;
   ``--storm-behind`` updates per channel are produced and consumed by the gateway; then every
   client reconnects at once with its cursor. Reported: the time until all received ``live``
   after their replay, replayed updates/s, and a check that each client got exactly the
   updates it missed (event ids carry the channel and a sequence number: no loss, no
   duplicate, per-partition offsets increasing);
3. the baseline, in the same run, for each phase of (1): a bare ``websockets`` asyncio server
   (``serve`` + ``broadcast()``, in its own process, on uvloop as the gateway) answering the
   same subscribe frames and sending, at the same rate for the same time, frames of the same
   size (a copy of a frame the gateway sent) to the same connections, measured with the same
   client workers. Its frames are stamped with the time they were due, so a server that falls
   behind its schedule shows it in its latency, as the gateway does behind a paced producer.

The gateway's rates are printed next to the baseline's (ratio). The machine runs the broker,
the gateway, the producer and the clients together (and whatever else runs on it: the CPU
lines say who had the cores). With a rate the gateway cannot sustain, the backlog waits in
Kafka and the latency grows with the length of the run: compare latencies at sustainable
rates (``--rate 100,300,1000``: a latency curve).

``--gateways N`` runs N gateway processes instead of one, a fleet on this machine (each its own
instance id and data directory, as "Fleet" in the README describes), and spreads each
channel's subscribers evenly over them, as a load balancer that knows nothing of channels
would (clients connect to each process's port directly: a balancer's own cost is not in the
figures). Their CPU and RSS are summed. Each process consumes and logs every record: the
per-record work is done N times.

    python -m benchmarks.fanout [--connections 1000,10000] [--channels 100] [--seconds 10]
                                [--rate 0 (auto: 50k/s delivered)] [--workers 4]
                                [--storm-clients 1000 --storm-behind 300] [--no-baseline]
                                [--client raw|websockets] [--warmup 8] [--gateways 1]
"""

# The modules, by concept: cli (arguments, the run in order), phases (connecting, measuring, the
# gateway's live phase, Kafka alone), storm (the resume storm), baseline (the bare websockets
# server), clients (the client worker processes), updates (what is produced, and how),
# processes (/proc readers, the command pipe to the children), report (what is printed), rawws
# (the lean websocket client).
