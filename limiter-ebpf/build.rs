//! Code generation happens in bpf-linker, so its CPU settings are passed as link arguments.
//! allows-misaligned-mem-access: packet headers sit at arbitrary offsets (an IPv4 source
//! address is usually 2 mod 4); without it LLVM splits every multi-byte load into single
//! bytes. The x86-64 and arm64 kernels accept misaligned packet loads.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
