//! What goes wrong in the demo, on a fixed schedule of real seconds: edge links drop for a while each minute and a
//! remote datacentre's WAN link 20 s in every two (the agents' telemetry and the operator's workload control both:
//! the pool takes nothing new and holds its jobs), and
//! now and then a datacentre GPU raises XID 79 (fallen off the bus) and is reset half a minute later.

use std::collections::BTreeMap;

use haiyun_agent::probe::fake::Fault;
use haiyun_scheduler::rng::SplitMix64;

use haiyun_operator::backend::simulated::SimulatedBackend;

use super::agents::Agents;

/// The real second of the first GPU fault.
const FIRST_FAULT_S: u64 = 20;
/// Real seconds between GPU faults.
const FAULT_EVERY_S: u64 = 45;
/// Real seconds a faulty GPU waits for its reset.
const RESET_AFTER_S: u64 = 30;
/// Each edge link's minute: up this many seconds, then down for the rest.
const EDGE_UP_S: u64 = 35;
/// A datacentre's WAN link: up this many seconds of every `WAN_PERIOD_S`, then down for the rest.
const WAN_UP_S: u64 = 100;
const WAN_PERIOD_S: u64 = 120;

/// Whether a link is down at `real` seconds: an edge site's (the `i`-th, so they take turns) or a WAN's.
fn down(real: u64, i: u64, wan: bool) -> bool {
    if wan { real % WAN_PERIOD_S >= WAN_UP_S } else { (real + 30 * i) % 60 >= EDGE_UP_S }
}

/// The schedule's state.
#[derive(Debug)]
pub struct Chaos {
    rng: SplitMix64,
    /// Faulty GPUs by the real second of their reset.
    resets: BTreeMap<u64, (String, u32)>,
    next_fault: u64,
}

impl Chaos {
    /// A schedule from `seed`.
    pub fn new(seed: u64) -> Self {
        Chaos { rng: SplitMix64::new(seed ^ 0xC4A0_5EED), resets: BTreeMap::new(), next_fault: FIRST_FAULT_S }
    }

    /// Applies what is due at `real` seconds (`now` on the demo's clock) to the agents and the pools' links;
    /// returns what changed, for the progress lines.
    pub fn tick(&mut self, real: u64, now: f64, agents: &Agents, pools: &SimulatedBackend) -> Vec<String> {
        let mut said = Vec::new();
        // Edge sites take turns: each pool's minute is offset by its position. A WAN link drops less often.
        for (i, (pool, relay)) in agents.relays.iter().enumerate() {
            let down = down(real, i as u64, relay.wan);
            if down != relay.is_down() {
                relay.set_down(down);
                said.push(format!("{pool}: link {}", if down { "down (its jobs are held)" } else { "back" }));
            }
            pools.set_link(pool, down, now);
        }
        let mut faults: Vec<(String, Fault)> = Vec::new();
        let due: Vec<u64> = self.resets.range(..=real).map(|(t, _)| *t).collect();
        for t in due {
            if let Some((node, gpu)) = self.resets.remove(&t) {
                said.push(format!("{node}: GPU {gpu} reset"));
                faults.push((node, Fault::Reset(gpu)));
            }
        }
        let big: Vec<(&String, &u32)> = agents.nodes.iter().filter(|(_, g)| **g >= 8).collect();
        if real >= self.next_fault && !big.is_empty() {
            self.next_fault = real + FAULT_EVERY_S;
            let (node, gpus) = big[self.rng.below(big.len() as u64) as usize];
            let gpu = self.rng.below(u64::from(*gpus)) as u32;
            said.push(format!("{node}: GPU {gpu} raised XID 79"));
            faults.push((node.clone(), Fault::Xid(gpu, 79)));
            self.resets.insert(real + RESET_AFTER_S, (node.clone(), gpu));
        }
        if let Ok(mut m) = agents.machines.lock() {
            for (node, f) in faults {
                m.faults.entry(node).or_default().push(f);
            }
        }
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_links_take_turns_each_minute_and_the_wan_drops_20_s_in_every_2_minutes() {
        let downs = |i, wan| (0..240).filter(|t| down(*t, i, wan)).count();
        assert_eq!(downs(0, false), 4 * 25, "an edge link is down 25 s of each minute");
        assert_eq!(downs(0, true), 2 * 20, "the WAN 20 s of every 2 minutes");
        // Two edge sites are never down together for long: their minutes are offset by half of one.
        let both = (0..240).filter(|t| down(*t, 0, false) && down(*t, 1, false)).count();
        assert!(both < downs(0, false) / 2, "{both}");
        assert!(!down(99, 0, true) && down(100, 0, true) && down(119, 0, true) && !down(120, 0, true));
    }
}
