//! Named link profiles: the networks Cabine's cabins and doctors really sit behind.

use std::str::FromStr;
use std::time::Duration;

use crate::link::LinkConfig;
use crate::loss::Loss;

/// Both directions of an impaired path, seen from the client: `uplink` carries what the
/// client sends to the server, `downlink` what the server sends back.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name (`custom` for hand-built ones).
    pub name: &'static str,
    /// Client → server.
    pub uplink: LinkConfig,
    /// Server → client.
    pub downlink: LinkConfig,
}

impl Profile {
    /// The names [`Profile::by_name`] knows.
    pub const NAMES: [&'static str; 4] = ["rural-adsl", "4g-doctor", "severe", "clean"];

    /// A rural cabin on ADSL: 1 Mbit/s up (200 ms of queue, like a modem's buffer), 8 Mbit/s
    /// down, 40 ms round trip, 1 % independent loss each way.
    pub fn rural_adsl() -> Self {
        let base = |rate, queue_ms| LinkConfig {
            loss: Loss::independent(0.01),
            delay: Duration::from_millis(20),
            ..LinkConfig::limited(rate, Duration::from_millis(queue_ms))
        };
        Profile {
            name: "rural-adsl",
            uplink: base(1_000_000, 200),
            downlink: base(8_000_000, 100),
        }
    }

    /// A doctor on 4G: 1.5 Mbit/s down, 5 Mbit/s up, 80 ms round trip with 30 ms of jitter
    /// each way (order kept, as the radio link delivers in order), 2 % loss each way.
    pub fn four_g_doctor() -> Self {
        let base = |rate| LinkConfig {
            loss: Loss::independent(0.02),
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(30),
            ..LinkConfig::limited(rate, Duration::from_millis(150))
        };
        Profile {
            name: "4g-doctor",
            uplink: base(5_000_000),
            downlink: base(1_500_000),
        }
    }

    /// A very poor link: 400 kbit/s each way, 150 ms round trip, 5 % loss in bursts of 3
    /// packets on average.
    pub fn severe() -> Self {
        let base = LinkConfig {
            loss: Loss::bursty(0.05, 3.0),
            delay: Duration::from_millis(75),
            ..LinkConfig::limited(400_000, Duration::from_millis(300))
        };
        Profile {
            name: "severe",
            uplink: base.clone(),
            downlink: base,
        }
    }

    /// No impairment at all (the relay only forwards).
    pub fn clean() -> Self {
        Profile {
            name: "clean",
            uplink: LinkConfig::default(),
            downlink: LinkConfig::default(),
        }
    }

    /// The profile called `name` (one of [`NAMES`](Self::NAMES)).
    pub fn by_name(name: &str) -> Result<Self, crate::Error> {
        match name {
            "rural-adsl" => Ok(Self::rural_adsl()),
            "4g-doctor" => Ok(Self::four_g_doctor()),
            "severe" => Ok(Self::severe()),
            "clean" => Ok(Self::clean()),
            other => Err(crate::Error::UnknownProfile(other.to_owned())),
        }
    }

    /// Checks both directions.
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.uplink.validate()?;
        self.downlink.validate()
    }

    /// The round-trip time the profile adds without queueing or jitter.
    pub fn base_rtt(&self) -> Duration {
        self.uplink.delay + self.downlink.delay
    }
}

impl FromStr for Profile {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::by_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_profiles_carry_the_issue_figures() {
        let adsl: Profile = "rural-adsl".parse().expect("known");
        assert_eq!(adsl.uplink.rate_bps, Some(1_000_000));
        assert_eq!(adsl.base_rtt(), Duration::from_millis(40));
        assert_eq!(adsl.uplink.loss.mean_ratio(), 0.01);
        let doctor = Profile::by_name("4g-doctor").expect("known");
        assert_eq!(doctor.downlink.rate_bps, Some(1_500_000));
        assert_eq!(doctor.base_rtt(), Duration::from_millis(80));
        assert_eq!(doctor.downlink.jitter, Duration::from_millis(30));
        let severe = Profile::by_name("severe").expect("known");
        assert_eq!(severe.uplink.rate_bps, Some(400_000));
        assert_eq!(severe.base_rtt(), Duration::from_millis(150));
        assert!((severe.downlink.loss.mean_ratio() - 0.05).abs() < 1e-9);
        assert!(matches!(severe.uplink.loss, Loss::GilbertElliott { .. }));
        for name in Profile::NAMES {
            Profile::by_name(name)
                .expect("known")
                .validate()
                .expect("valid");
        }
        assert!(Profile::by_name("dial-up").is_err());
    }
}
