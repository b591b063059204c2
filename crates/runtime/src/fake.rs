//! An in-memory [`Machines`] for tests of what drives machines (the engine): no root, no
//! processes, milliseconds per call. Failures and delays can be injected per operation and
//! machine, machines can be made to die as a crash would, what they use (`usage`, for metrics)
//! is set by the test, and every call is recorded.
use crate::inspect::{Exec, ExecOutput};
use crate::{MachineSpec, MachineState, MachineUsage, Machines, NetworkSpec, RuntimeError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The operations of [`Machines`], to target injected failures and delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    EnsureNetwork,
    Create,
    Start,
    Stop,
    Kill,
    Reimage,
    Delete,
    State,
    List,
    Usage,
    Exec,
    Console,
}

/// One recorded call: the operation and the machine it named (empty for network and list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub machine: String,
}

/// One fake machine: the spec it was created (or last reimaged) with and whether it runs.
#[derive(Debug, Clone)]
pub struct FakeMachine {
    pub spec: MachineSpec,
    pub pid: Option<u32>,
}

/// Which calls a fault applies to.
#[derive(Clone)]
enum Target {
    Any,
    Machine(String),
    /// Machines whose spec has this layer (a "bad image").
    Layer(PathBuf),
}

#[derive(Clone)]
struct Fault {
    op: Op,
    target: Target,
    /// How many more calls fail (`None`: all of them).
    remaining: Option<usize>,
    message: String,
}

#[derive(Clone)]
struct Delay {
    op: Op,
    target: Target,
    by: Duration,
}

#[derive(Default)]
struct Inner {
    machines: BTreeMap<String, FakeMachine>,
    calls: Vec<Call>,
    faults: Vec<Fault>,
    delays: Vec<Delay>,
    next_pid: u32,
    network: Option<NetworkSpec>,
    usage: BTreeMap<String, MachineUsage>,
    /// Per machine: `argv[0]` → what the command answers.
    replies: BTreeMap<String, BTreeMap<String, ExecOutput>>,
    /// Per machine: every command line run in it.
    execs: BTreeMap<String, Vec<Vec<String>>>,
    console: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
pub struct FakeMachines {
    inner: Mutex<Inner>,
}

impl Target {
    fn matches(&self, name: &str, spec: Option<&MachineSpec>) -> bool {
        match self {
            Target::Any => true,
            Target::Machine(m) => m == name,
            Target::Layer(l) => spec.is_some_and(|s| s.layers.contains(l)),
        }
    }
}

impl FakeMachines {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_fault(&self, op: Op, target: Target, times: Option<usize>, message: &str) {
        self.lock().faults.push(Fault {
            op,
            target,
            remaining: times,
            message: message.into(),
        });
    }

    /// The next `times` calls of `op` (on `machine`, or on any machine) fail with `message`.
    pub fn fail(&self, op: Op, machine: Option<&str>, times: usize, message: &str) {
        let target = machine.map_or(Target::Any, |m| Target::Machine(m.into()));
        self.push_fault(op, target, Some(times), message);
    }

    /// Every call of `op` on a machine whose spec has `layer` fails (an image that cannot boot).
    pub fn fail_layer(&self, op: Op, layer: impl Into<PathBuf>, message: &str) {
        self.push_fault(op, Target::Layer(layer.into()), None, message);
    }

    /// Calls of `op` (on `machine`, or on any) take `by` longer.
    pub fn delay(&self, op: Op, machine: Option<&str>, by: Duration) {
        let target = machine.map_or(Target::Any, |m| Target::Machine(m.into()));
        self.lock().delays.push(Delay { op, target, by });
    }

    /// Removes every injected failure and delay.
    pub fn heal(&self) {
        let mut g = self.lock();
        g.faults.clear();
        g.delays.clear();
    }

    /// What a command named `argv0` answers in `machine` (others exit 0, print nothing);
    /// `argv0` may also be the first two words (`systemctl list-units`), which win over one.
    pub fn set_reply(&self, machine: &str, argv0: &str, out: ExecOutput) {
        let mut g = self.lock();
        g.replies
            .entry(machine.into())
            .or_default()
            .insert(argv0.into(), out);
    }

    /// `systemctl list-units --state=failed` in `machine` lists these units.
    pub fn set_failed_units(&self, machine: &str, units: &[&str]) {
        let text: String = units
            .iter()
            .map(|u| format!("{u} loaded failed failed {u}\n"))
            .collect();
        self.set_reply(
            machine,
            "systemctl list-units",
            ExecOutput::exited(0, &text, ""),
        );
        // systemctl exits 1 for `degraded` (a unit failed, the boot is over).
        self.set_system_state(machine, "degraded", 1);
    }

    /// What `systemctl is-system-running` answers in `machine`.
    pub fn set_system_state(&self, machine: &str, state: &str, code: i32) {
        let out = ExecOutput::exited(code, &format!("{state}\n"), "");
        self.set_reply(machine, "systemctl is-system-running", out);
    }

    /// `journalctl` in `machine` prints `text`.
    pub fn set_journal(&self, machine: &str, text: &str) {
        self.set_reply(machine, "journalctl", ExecOutput::exited(0, text, ""));
    }

    /// The machine's console log.
    pub fn set_console(&self, machine: &str, text: &[u8]) {
        self.lock().console.insert(machine.into(), text.to_vec());
    }

    /// The command lines run in `machine`, in order.
    pub fn execs(&self, machine: &str) -> Vec<Vec<String>> {
        self.lock().execs.get(machine).cloned().unwrap_or_default()
    }

    /// The machine stops as if it crashed (no call is recorded: nobody asked).
    pub fn die(&self, name: &str) -> bool {
        match self.lock().machines.get_mut(name) {
            Some(m) => m.pid.take().is_some(),
            None => false,
        }
    }

    /// What `usage` reports for `name` from now on: while the machine runs, or always for a
    /// machine the fake does not know (tests that only drive metrics).
    pub fn set_usage(&self, name: &str, usage: MachineUsage) {
        self.lock().usage.insert(name.into(), usage);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls of `op` so far, with their machines.
    pub fn calls_of(&self, op: Op) -> Vec<String> {
        let g = self.lock();
        g.calls
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.machine.clone())
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    pub fn machine(&self, name: &str) -> Option<FakeMachine> {
        self.lock().machines.get(name).cloned()
    }

    /// Names of the machines that run now.
    pub fn running(&self) -> Vec<String> {
        let g = self.lock();
        g.machines
            .iter()
            .filter(|(_, m)| m.pid.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn network(&self) -> Option<NetworkSpec> {
        self.lock().network.clone()
    }

    /// Records the call, sleeps any injected delay (outside the lock), and returns an injected
    /// failure if one applies.
    fn enter(&self, op: Op, name: &str, spec: Option<&MachineSpec>) -> Result<(), RuntimeError> {
        let (delay, fault) = {
            let mut g = self.lock();
            g.calls.push(Call {
                op,
                machine: name.into(),
            });
            let known = g.machines.get(name).map(|m| m.spec.clone());
            let spec = spec.or(known.as_ref());
            let delay: Duration = g
                .delays
                .iter()
                .filter(|d| d.op == op && d.target.matches(name, spec))
                .map(|d| d.by)
                .sum();
            let fault = g
                .faults
                .iter_mut()
                .find(|f| f.op == op && f.remaining != Some(0) && f.target.matches(name, spec))
                .map(|f| {
                    if let Some(n) = &mut f.remaining {
                        *n -= 1;
                    }
                    f.message.clone()
                });
            (delay, fault)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match fault {
            Some(msg) => Err(RuntimeError::Command {
                machine: name.into(),
                cmd: format!("fake {op:?}"),
                stderr: msg,
            }),
            None => Ok(()),
        }
    }

    fn not_found(name: &str) -> RuntimeError {
        RuntimeError::NotFound(name.into())
    }
}

impl Machines for FakeMachines {
    fn ensure_network(&self, net: &NetworkSpec) -> Result<(), RuntimeError> {
        self.enter(Op::EnsureNetwork, "", None)?;
        self.lock().network = Some(net.clone());
        Ok(())
    }

    fn create(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        self.enter(Op::Create, &spec.name, Some(spec))?;
        let mut g = self.lock();
        // Idempotent like the real driver: an existing machine keeps its state.
        g.machines
            .entry(spec.name.clone())
            .or_insert_with(|| FakeMachine {
                spec: spec.clone(),
                pid: None,
            });
        Ok(())
    }

    fn start(&self, name: &str) -> Result<u32, RuntimeError> {
        self.enter(Op::Start, name, None)?;
        let mut g = self.lock();
        g.next_pid += 1;
        let pid = g.next_pid + 1000;
        let m = g
            .machines
            .get_mut(name)
            .ok_or_else(|| Self::not_found(name))?;
        Ok(*m.pid.get_or_insert(pid))
    }

    fn stop(&self, name: &str, _timeout: Duration) -> Result<(), RuntimeError> {
        self.enter(Op::Stop, name, None)?;
        let mut g = self.lock();
        let m = g
            .machines
            .get_mut(name)
            .ok_or_else(|| Self::not_found(name))?;
        m.pid = None;
        Ok(())
    }

    fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Kill, name, None)?;
        let mut g = self.lock();
        let m = g
            .machines
            .get_mut(name)
            .ok_or_else(|| Self::not_found(name))?;
        m.pid = None;
        Ok(())
    }

    fn reimage(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        self.enter(Op::Reimage, &spec.name, Some(spec))?;
        let mut g = self.lock();
        let m = g
            .machines
            .get_mut(&spec.name)
            .ok_or_else(|| Self::not_found(&spec.name))?;
        if m.pid.is_some() {
            return Err(RuntimeError::InvalidSpec {
                machine: spec.name.clone(),
                msg: "must be stopped before reimage".into(),
            });
        }
        m.spec = spec.clone();
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Delete, name, None)?;
        self.lock().machines.remove(name);
        Ok(())
    }

    fn state(&self, name: &str) -> Result<MachineState, RuntimeError> {
        self.enter(Op::State, name, None)?;
        Ok(match self.lock().machines.get(name) {
            None => MachineState::Missing,
            Some(FakeMachine { pid: Some(pid), .. }) => MachineState::Running { pid: *pid },
            Some(_) => MachineState::Stopped,
        })
    }

    fn list(&self) -> Result<Vec<String>, RuntimeError> {
        self.enter(Op::List, "", None)?;
        Ok(self.lock().machines.keys().cloned().collect())
    }

    fn usage(&self, name: &str) -> Result<Option<MachineUsage>, RuntimeError> {
        self.enter(Op::Usage, name, None)?;
        let g = self.lock();
        let stopped = g.machines.get(name).is_some_and(|m| m.pid.is_none());
        Ok(g.usage.get(name).copied().filter(|_| !stopped))
    }

    fn exec(&self, name: &str, req: Exec) -> Result<ExecOutput, RuntimeError> {
        self.enter(Op::Exec, name, None)?;
        let out = {
            let mut g = self.lock();
            if g.machines.get(name).and_then(|m| m.pid).is_none() {
                return Err(RuntimeError::State {
                    machine: name.into(),
                    msg: "is not running".into(),
                });
            }
            g.execs
                .entry(name.into())
                .or_default()
                .push(req.argv.clone());
            let argv0 = req.argv.first().cloned().unwrap_or_default();
            let two = req.argv.get(..2).map(|w| w.join(" ")).unwrap_or_default();
            g.replies
                .get(name)
                .and_then(|r| r.get(&two).or_else(|| r.get(&argv0)))
                .cloned()
                .unwrap_or_else(|| ExecOutput::exited(0, "", ""))
        };
        match req.stdout_sink {
            Some(sink) => {
                sink(&out.stdout);
                Ok(ExecOutput {
                    stdout: Vec::new(),
                    ..out
                })
            }
            None => Ok(out),
        }
    }

    fn console_tail(&self, name: &str, max: usize) -> Result<Vec<u8>, RuntimeError> {
        self.enter(Op::Console, name, None)?;
        let g = self.lock();
        if !g.machines.contains_key(name) {
            return Err(Self::not_found(name));
        }
        let c = g.console.get(name).cloned().unwrap_or_default();
        Ok(c[c.len().saturating_sub(max)..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, layer: &str) -> MachineSpec {
        let subnet: crate::Ipv4Net = "10.0.0.0/24".parse().unwrap();
        MachineSpec {
            name: name.into(),
            hostname: name.into(),
            layers: vec![PathBuf::from(layer)],
            ip: subnet.host(5),
            network: NetworkSpec {
                bridge: "br".into(),
                subnet,
                gateway: subnet.host(1),
            },
            files: vec![],
            size: None,
        }
    }

    #[test]
    fn lifecycle_failures_and_calls() {
        let f = FakeMachines::new();
        assert_eq!(f.state("a").unwrap(), MachineState::Missing);
        f.create(&spec("a", "/good")).unwrap();
        assert_eq!(f.state("a").unwrap(), MachineState::Stopped);
        let pid = f.start("a").unwrap();
        assert_eq!(
            f.start("a").unwrap(),
            pid,
            "start of a running machine is its pid"
        );
        assert!(
            f.reimage(&spec("a", "/bad")).is_err(),
            "reimage needs a stop"
        );
        assert!(f.die("a"));
        f.fail_layer(Op::Start, "/bad", "no init");
        f.reimage(&spec("a", "/bad")).unwrap();
        let e = f.start("a").unwrap_err().to_string();
        assert!(e.contains("no init"), "{e}");
        f.fail(Op::Delete, Some("a"), 1, "busy");
        assert!(f.delete("a").is_err());
        f.delete("a").unwrap();
        assert_eq!(f.list().unwrap(), Vec::<String>::new());
        assert_eq!(
            f.calls_of(Op::Start),
            vec!["a".to_string(), "a".into(), "a".into()]
        );
        assert_eq!(f.calls_of(Op::Delete).len(), 2);
    }

    #[test]
    fn usage_is_injected_and_reported_while_running() {
        let f = FakeMachines::new();
        let u = MachineUsage {
            cpu: Some(Duration::from_secs(3)),
            memory_bytes: Some(100),
            ..Default::default()
        };
        assert_eq!(f.usage("a").unwrap(), None);
        f.set_usage("a", u);
        assert_eq!(
            f.usage("a").unwrap(),
            Some(u),
            "unknown to the fake: reported"
        );
        f.create(&spec("a", "/good")).unwrap();
        assert_eq!(f.usage("a").unwrap(), None, "stopped");
        f.start("a").unwrap();
        assert_eq!(f.usage("a").unwrap(), Some(u));
        f.fail(Op::Usage, Some("a"), 1, "gone");
        assert!(f.usage("a").is_err());
    }
}
