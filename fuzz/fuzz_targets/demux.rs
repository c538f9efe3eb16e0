//! Any datagram from any address: routing never panics and unknown traffic is never routed.
#![no_main]
use cabine_sfu::demux::Demux;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d: Demux<u8> = Demux::default();
    d.register("srv1".into(), 1);
    let src = std::net::SocketAddr::from(([127, 0, 0, 1], 4000));
    if let Ok(r) = d.route(src, data) {
        assert_eq!(r.key, 1);
    }
    let _ = d.route(src, data);
});
