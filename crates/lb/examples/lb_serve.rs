//! The LB data plane alone, as `scaleset lb-serve` runs it (same runtime choice), for
//! `bench/l7_profile.py --scaleset target/release/examples/lb_serve`: a release build of this
//! example takes a fraction of the whole binary's.
//!
//! Usage: `lb_serve lb-serve --config FILE --admin SOCKET`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(std::path::PathBuf::from)
    };
    let (Some(config), Some(admin)) = (arg("--config"), arg("--admin")) else {
        eprintln!("usage: lb_serve lb-serve --config FILE --admin SOCKET");
        std::process::exit(2);
    };
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder.enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(lb::serve(&config, &admin)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
