//! CPU time per process around each measurement: on a small machine the processes (client,
//! mosquitto, gateway, agent) share the cores, so the cost per message explains the ratios.

use std::ops::{AddAssign, Sub};

/// Linux reports /proc/PID/stat times in USER_HZ, which is 100 on every architecture's ABI.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) used by a process so far; `None` if it is gone.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SEC)
}

/// CPU seconds of a process and of its children that have exited and been waited for
/// (cutime and cstime, fields 16 and 17): websockify forks one child per connection.
pub fn cpu_secs_with_children(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for i in 11..=14 {
        ticks += f.get(i)?.parse::<f64>().ok()?;
    }
    Some(ticks / TICKS_PER_SEC)
}

/// CPU seconds of the bench client, mosquitto, the gateway and the agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub client: f64,
    pub broker: f64,
    pub gateway: f64,
    pub agent: f64,
}

pub struct Meter {
    broker: String,
    gateway: String,
    agent: String,
}

impl Meter {
    pub fn new(broker_pid: u32, gateway_pid: u32, agent_pid: u32) -> Meter {
        Meter {
            broker: broker_pid.to_string(),
            gateway: gateway_pid.to_string(),
            agent: agent_pid.to_string(),
        }
    }

    pub fn read(&self) -> Cpu {
        Cpu {
            client: cpu_secs("self").unwrap_or(0.0),
            broker: cpu_secs(&self.broker).unwrap_or(0.0),
            gateway: cpu_secs(&self.gateway).unwrap_or(0.0),
            agent: cpu_secs(&self.agent).unwrap_or(0.0),
        }
    }
}

impl Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            client: self.client - o.client,
            broker: self.broker - o.broker,
            gateway: self.gateway - o.gateway,
            agent: self.agent - o.agent,
        }
    }
}

impl AddAssign for Cpu {
    fn add_assign(&mut self, o: Cpu) {
        self.client += o.client;
        self.broker += o.broker;
        self.gateway += o.gateway;
        self.agent += o.agent;
    }
}

impl Cpu {
    /// Microseconds per message for each process, as "client / mosquitto / gateway / agent".
    pub fn per_msg(&self, msgs: usize) -> String {
        let us = |s: f64| s * 1e6 / msgs.max(1) as f64;
        format!(
            "{:>5.1} / {:>5.1} / {:>5.1} / {:>5.1}  (sum {:>5.1})",
            us(self.client),
            us(self.broker),
            us(self.gateway),
            us(self.agent),
            us(self.client + self.broker + self.gateway + self.agent)
        )
    }
}
