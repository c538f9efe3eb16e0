//! The impairment relay's end-to-end tests on real UDP sockets on 127.0.0.1, one module per
//! behaviour. Each waits for what it checks with a deadline, never for a fixed time.

mod relay;
