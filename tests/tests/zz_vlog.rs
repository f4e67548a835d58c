use aya::{programs::Xdp, EbpfLoader, VerifierLogLevel};
#[test]
fn vlog() {
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::STATS)
        .load(limiter_user::ebpf_objects::LIMITER)
        .unwrap();
    let p: &mut Xdp = ebpf.program_mut("glance_limiter").unwrap().try_into().unwrap();
    let r = p.load();
    let log = match &r { Ok(()) => "OK".to_string(), Err(e) => format!("{e:?}") };
    std::fs::write("/tmp/vlog.txt", log).unwrap();
    if let Ok(()) = r { let info = p.info().unwrap(); std::fs::write("/tmp/vlog-ok.txt", format!("{:?}", info.verified_instruction_count())).unwrap(); }
}
