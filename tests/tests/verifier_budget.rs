//! Every program of the XDP object verifies with room to spare. The verifier stops at a million
//! processed instructions, and how many it processes for one program depends on the kernel's
//! version (its state pruning changes between releases): a program that passes near the limit
//! here can fail to load on the next kernel, which would leave a node unprotected. This test
//! fails well before the limit, on any kernel, so the budget is restored while the change
//! that spent it is fresh.
//!
//! The proxy program once went past the limit on one 6.18 build only: its pass counter, a
//! constant carried through the whole proxy path, doubled every state the verifier followed.

use aya::{
    programs::{Program, ProgramInfo},
    EbpfLoader,
};
use limiter_tests::require_kernel;
use limiter_user::ebpf_objects;

/// The kernel's limit (`BPF_COMPLEXITY_LIMIT_INSNS`).
const VERIFIER_LIMIT: u32 = 1_000_000;
/// What a program may use of it: the rest is margin for other kernels.
const BUDGET: u32 = VERIFIER_LIMIT * 6 / 10;

#[test]
fn every_program_verifies_within_its_budget() {
    require_kernel!();
    let mut ebpf = EbpfLoader::new()
        .load(ebpf_objects::LIMITER)
        .expect("parse the XDP object");
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    assert!(
        names.iter().any(|name| name == "glance_limiter_proxy"),
        "the object holds the proxy program: {names:?}"
    );
    let mut report = Vec::new();
    for name in &names {
        let info: ProgramInfo = match ebpf.program_mut(name).expect("listed program") {
            Program::Xdp(program) => {
                program
                    .load()
                    .unwrap_or_else(|e| panic!("{name} does not verify: {e}"));
                program.info()
            }
            Program::SchedClassifier(program) => {
                program
                    .load()
                    .unwrap_or_else(|e| panic!("{name} does not verify: {e}"));
                program.info()
            }
            _ => panic!("{name}: the object holds XDP programs and the egress classifier"),
        }
        .expect("program info");
        let verified = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16 and later)");
        eprintln!("{name}: {verified} instructions processed by the verifier");
        report.push((name.clone(), verified));
    }
    let over: Vec<_> = report.iter().filter(|(_, n)| *n > BUDGET).collect();
    assert!(
        over.is_empty(),
        "over the verifier budget of {BUDGET} (of {VERIFIER_LIMIT}): {over:?}"
    );
}
