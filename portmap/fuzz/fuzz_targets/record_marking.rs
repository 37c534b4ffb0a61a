//! TCP record marking: any byte stream, bounded record size.
#![no_main]
use kiln_portmap::rpc::record::read_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio_rt();
    rt.block_on(async {
        let mut r = data;
        while let Ok(Some(rec)) = read_record(&mut r, 4096).await {
            assert!(rec.len() <= 4096);
        }
    });
});

fn tokio_rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}
