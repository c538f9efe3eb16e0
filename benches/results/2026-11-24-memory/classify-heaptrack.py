import sys, re, collections
# Classifies heaptrack's peak-cost flamegraph stacks (root first, ';'-separated, cost last)
# into components; prints bytes per component and per consultation.
path, n = sys.argv[1], int(sys.argv[2])
rules = [  # (component, substring in stack, checked in order)
 ("fixed: server start (Sfu::start buffers, channels, runtime)", ["Sfu::start", "Server::start", "cabine::main"]),
 ("fixed: ops history, metrics (server)", ["ops::History", "opentelemetry"]),
 ("RTX history: entries (EvictingBuffer slots)", ["EvictingBuffer"]),
 ("received payloads (Arc<[u8]>, kept by the RTX history)", ["Arc$LT$$u5b$T$u5d$$GT$::copy_from_slice"]),
 ("str0m send queues / datagram queue (poll_datagram VecDeque)", ["poll_datagram"]),
 ("DTLS/SRTP/crypto (aws-lc, dimpl)", ["aws_lc", "dimpl", "srtp", "Srtp"]),
 ("SCTP / data channels", ["sctp", "Sctp"]),
 ("str0m Rtc setup (SDP, media, streams, BWE)", ["RtcConfig::build", "accept_offer", "sdp_api", "SdpApi", "declare_stream", "new_from_config"]),
 ("str0m stats / BWE / TWCC", ["stats", "Stats", "bwe", "Bwe", "twcc", "Twcc"]),
 ("shell receive path (Receiver, demux)", ["Receiver_::run", "demux", "Demux"]),
 ("other str0m", ["str0m::"]),
 ("cabine room / shell (ours)", ["cabine_sfu"]),
 ("server (HTTP, API, tokio)", ["cabine_server", "tokio", "axum", "hyper"]),
]
tot = collections.Counter()
for line in open(path):
    line = line.rstrip("\n")
    if not line: continue
    stack, cost = line.rsplit(" ", 1)
    cost = int(cost)
    for name, keys in rules:
        if any(k in stack for k in keys):
            tot[name] += cost; break
    else:
        tot["other"] += cost
allb = sum(tot.values())
fixed = sum(v for k, v in tot.items() if k.startswith("fixed"))
print(f"{'component':62} {'bytes (all)':>12} {'per cons':>10}")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{k:62} {v:12d} {'' if k.startswith('fixed') else v // n:>10}")
print(f"{'total':62} {allb:12d}")
print(f"{'per consultation (total minus fixed) / ' + str(n):62} {'':12} {(allb - fixed) // n:>10}")
