//! `knfs-mount SOURCE TARGET OPTIONS`: mount(2) of type `nfs` with text
//! options, as util-linux's mount.nfs does, for the kernel NFS client guest
//! (`kiln_tests::knfs`): busybox's `mount` passes the legacy binary mount
//! data, which cannot ask for `mountproto=udp`. The options must carry
//! `addr=` (and `mountaddr=`): the kernel does not resolve names.

use std::ffi::CString;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: knfs-mount SOURCE TARGET OPTIONS");
        std::process::exit(2);
    }
    let c = |s: &str| CString::new(s).unwrap_or_default();
    let (src, dst, fstype, opts) = (c(&args[1]), c(&args[2]), c("nfs"), c(&args[3]));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        eprintln!(
            "knfs-mount: mounting {} on {} failed: {}",
            args[1],
            args[2],
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
}
