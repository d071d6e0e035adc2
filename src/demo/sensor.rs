//! The simulated devices and what they report.

use super::abuser::ABUSERS;
use super::agent;

/// One simulated device and the reading it sends.
pub struct Sensor {
    pub device: &'static str,
    pub quantity: &'static str,
    pub unit: &'static str,
    /// Readings wander around this value.
    pub base: f64,
    /// The gateway path its bytes arrive on.
    pub path: &'static str,
    /// Speaks plain MQTT over TCP, to the agent, which carries it to `path`.
    pub legacy: bool,
}

impl Sensor {
    pub fn topic(&self) -> String {
        format!("plant/{}/{}", self.device, self.quantity)
    }

    /// How its readings reach the gateway, for the output.
    pub fn via(&self) -> String {
        if self.legacy {
            format!("agent -> {}", self.path)
        } else {
            self.path.to_string()
        }
    }
}

/// The well-behaved devices.
pub static SENSORS: [Sensor; 4] = [
    sensor("boiler-1", "temp", "°C", 21.0, "/mqtt"),
    sensor("press-2", "pressure", "bar", 4.2, "/mqtt"),
    sensor("pump-3", "flow", "m³/h", 12.5, "/mqtt"),
    legacy("meter-4", "power", "kW", 3.1),
];

pub const fn sensor(
    device: &'static str,
    quantity: &'static str,
    unit: &'static str,
    base: f64,
    path: &'static str,
) -> Sensor {
    Sensor {
        device,
        quantity,
        unit,
        base,
        path,
        legacy: false,
    }
}

/// A legacy device: no WebSocket, no TLS, so it goes through the agent.
const fn legacy(
    device: &'static str,
    quantity: &'static str,
    unit: &'static str,
    base: f64,
) -> Sensor {
    Sensor {
        legacy: true,
        ..sensor(device, quantity, unit, base, agent::PATH)
    }
}

/// Every device the platform may hear from: the well-behaved ones, then the abusers.
pub fn all_sensors() -> impl Iterator<Item = &'static Sensor> {
    SENSORS.iter().chain(ABUSERS.iter().map(|a| &a.sensor))
}
