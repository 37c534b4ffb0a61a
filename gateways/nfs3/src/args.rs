//! NFSv3 procedure arguments (RFC 1813 §3.3.x `*3args`), decoded from a
//! call's XDR without copying: handles, names and write data borrow the
//! received message. Every length is bounded (`NFS3_FHSIZE`, `MAX_NAME`,
//! `MAX_PATH`, the transport's write limit).

use kiln_portmap::xdr::{XdrReader, XdrResult};

use crate::types::*;

/// A raw `nfs_fh3` (at most 64 bytes).
pub type RawFh<'a> = &'a [u8];

/// Decodes an `nfs_fh3`.
pub fn fh<'a>(r: &mut XdrReader<'a>) -> XdrResult<RawFh<'a>> {
    r.get_opaque(NFS3_FHSIZE)
}

/// `diropargs3`: a directory and a name in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirOpArgs<'a> {
    /// The directory.
    pub dir: RawFh<'a>,
    /// The name (raw bytes, validated later).
    pub name: &'a [u8],
}

impl<'a> DirOpArgs<'a> {
    /// Decodes a `diropargs3`.
    pub fn decode(r: &mut XdrReader<'a>) -> XdrResult<Self> {
        Ok(DirOpArgs {
            dir: fh(r)?,
            // Longer names are read (to answer NAMETOOLONG) up to a sane cap.
            name: r.get_string(MAX_PATH)?,
        })
    }
}

/// SETATTR3args.
#[derive(Debug, Clone, Copy)]
pub struct SetattrArgs<'a> {
    /// Object.
    pub object: RawFh<'a>,
    /// New attributes.
    pub attrs: Sattr3,
    /// `sattrguard3`: the ctime the object must still have.
    pub guard: Option<NfsTime3>,
}

/// ACCESS3args.
#[derive(Debug, Clone, Copy)]
pub struct AccessArgs<'a> {
    /// Object.
    pub object: RawFh<'a>,
    /// Bits asked.
    pub access: u32,
}

/// READ3args and COMMIT3args.
#[derive(Debug, Clone, Copy)]
pub struct RangeArgs<'a> {
    /// File.
    pub file: RawFh<'a>,
    /// Offset.
    pub offset: u64,
    /// Count.
    pub count: u32,
}

/// WRITE3args.
#[derive(Debug, Clone, Copy)]
pub struct WriteArgs<'a> {
    /// File.
    pub file: RawFh<'a>,
    /// Offset.
    pub offset: u64,
    /// Count (must equal the data's length).
    pub count: u32,
    /// Stability asked.
    pub stable: StableHow,
    /// The data.
    pub data: &'a [u8],
}

/// `createhow3`.
#[derive(Debug, Clone, Copy)]
pub enum CreateHow {
    /// UNCHECKED: create or open.
    Unchecked(Sattr3),
    /// GUARDED: fail if it exists.
    Guarded(Sattr3),
    /// EXCLUSIVE with a verifier.
    Exclusive([u8; NFS3_VERFSIZE]),
}

/// CREATE3args.
#[derive(Debug, Clone, Copy)]
pub struct CreateArgs<'a> {
    /// Where.
    pub wher: DirOpArgs<'a>,
    /// How.
    pub how: CreateHow,
}

/// MKDIR3args.
#[derive(Debug, Clone, Copy)]
pub struct MkdirArgs<'a> {
    /// Where.
    pub wher: DirOpArgs<'a>,
    /// Attributes.
    pub attrs: Sattr3,
}

/// SYMLINK3args.
#[derive(Debug, Clone, Copy)]
pub struct SymlinkArgs<'a> {
    /// Where.
    pub wher: DirOpArgs<'a>,
    /// Attributes.
    pub attrs: Sattr3,
    /// Target.
    pub target: &'a [u8],
}

/// MKNOD3args.
#[derive(Debug, Clone, Copy)]
pub struct MknodArgs<'a> {
    /// Where.
    pub wher: DirOpArgs<'a>,
    /// Type.
    pub ftype: Ftype3,
    /// Attributes (none for types MKNOD cannot make).
    pub attrs: Sattr3,
    /// Device numbers for NF3CHR/NF3BLK.
    pub spec: (u32, u32),
}

/// RENAME3args.
#[derive(Debug, Clone, Copy)]
pub struct RenameArgs<'a> {
    /// From.
    pub from: DirOpArgs<'a>,
    /// To.
    pub to: DirOpArgs<'a>,
}

/// LINK3args.
#[derive(Debug, Clone, Copy)]
pub struct LinkArgs<'a> {
    /// Existing file.
    pub file: RawFh<'a>,
    /// New name.
    pub link: DirOpArgs<'a>,
}

/// READDIR3args and READDIRPLUS3args (`dircount` is 0 for READDIR).
#[derive(Debug, Clone, Copy)]
pub struct ReaddirArgs<'a> {
    /// Directory.
    pub dir: RawFh<'a>,
    /// Where to continue.
    pub cookie: u64,
    /// Verifier of the listing.
    pub cookieverf: [u8; NFS3_VERFSIZE],
    /// READDIRPLUS: bytes of names + ids.
    pub dircount: u32,
    /// Bytes of the whole reply.
    pub maxcount: u32,
}

/// Decodes SETATTR3args.
pub fn setattr<'a>(r: &mut XdrReader<'a>) -> XdrResult<SetattrArgs<'a>> {
    Ok(SetattrArgs {
        object: fh(r)?,
        attrs: Sattr3::decode(r)?,
        guard: r.get_option(NfsTime3::decode)?,
    })
}

/// Decodes ACCESS3args.
pub fn access<'a>(r: &mut XdrReader<'a>) -> XdrResult<AccessArgs<'a>> {
    Ok(AccessArgs {
        object: fh(r)?,
        access: r.get_u32()?,
    })
}

/// Decodes READ3args / COMMIT3args.
pub fn range<'a>(r: &mut XdrReader<'a>) -> XdrResult<RangeArgs<'a>> {
    Ok(RangeArgs {
        file: fh(r)?,
        offset: r.get_u64()?,
        count: r.get_u32()?,
    })
}

/// Decodes WRITE3args with at most `max_data` bytes of data.
pub fn write<'a>(r: &mut XdrReader<'a>, max_data: usize) -> XdrResult<WriteArgs<'a>> {
    let file = fh(r)?;
    let offset = r.get_u64()?;
    let count = r.get_u32()?;
    let stable = match r.get_u32()? {
        0 => StableHow::UNSTABLE,
        1 => StableHow::DATA_SYNC,
        2 => StableHow::FILE_SYNC,
        value => {
            return Err(kiln_portmap::XdrError::BadValue {
                what: "stable_how",
                value,
            })
        }
    };
    let data = r.get_opaque(max_data)?;
    Ok(WriteArgs {
        file,
        offset,
        count,
        stable,
        data,
    })
}

/// Decodes CREATE3args.
pub fn create<'a>(r: &mut XdrReader<'a>) -> XdrResult<CreateArgs<'a>> {
    let wher = DirOpArgs::decode(r)?;
    let how = match r.get_u32()? {
        0 => CreateHow::Unchecked(Sattr3::decode(r)?),
        1 => CreateHow::Guarded(Sattr3::decode(r)?),
        2 => CreateHow::Exclusive(r.get_array::<NFS3_VERFSIZE>()?),
        value => {
            return Err(kiln_portmap::XdrError::BadValue {
                what: "createmode3",
                value,
            })
        }
    };
    Ok(CreateArgs { wher, how })
}

/// Decodes MKDIR3args.
pub fn mkdir<'a>(r: &mut XdrReader<'a>) -> XdrResult<MkdirArgs<'a>> {
    Ok(MkdirArgs {
        wher: DirOpArgs::decode(r)?,
        attrs: Sattr3::decode(r)?,
    })
}

/// Decodes SYMLINK3args.
pub fn symlink<'a>(r: &mut XdrReader<'a>) -> XdrResult<SymlinkArgs<'a>> {
    Ok(SymlinkArgs {
        wher: DirOpArgs::decode(r)?,
        attrs: Sattr3::decode(r)?,
        target: r.get_string(MAX_PATH)?,
    })
}

/// Decodes MKNOD3args.
pub fn mknod<'a>(r: &mut XdrReader<'a>) -> XdrResult<MknodArgs<'a>> {
    let wher = DirOpArgs::decode(r)?;
    let ftype = Ftype3::decode(r)?;
    let (attrs, spec) = match ftype {
        Ftype3::NF3CHR | Ftype3::NF3BLK => {
            let a = Sattr3::decode(r)?;
            (a, (r.get_u32()?, r.get_u32()?))
        }
        Ftype3::NF3SOCK | Ftype3::NF3FIFO => (Sattr3::decode(r)?, (0, 0)),
        _ => (Sattr3::EMPTY, (0, 0)),
    };
    Ok(MknodArgs {
        wher,
        ftype,
        attrs,
        spec,
    })
}

/// Decodes RENAME3args.
pub fn rename<'a>(r: &mut XdrReader<'a>) -> XdrResult<RenameArgs<'a>> {
    Ok(RenameArgs {
        from: DirOpArgs::decode(r)?,
        to: DirOpArgs::decode(r)?,
    })
}

/// Decodes LINK3args.
pub fn link<'a>(r: &mut XdrReader<'a>) -> XdrResult<LinkArgs<'a>> {
    Ok(LinkArgs {
        file: fh(r)?,
        link: DirOpArgs::decode(r)?,
    })
}

/// Decodes READDIR3args (`plus` false) or READDIRPLUS3args.
pub fn readdir<'a>(r: &mut XdrReader<'a>, plus: bool) -> XdrResult<ReaddirArgs<'a>> {
    let dir = fh(r)?;
    let cookie = r.get_u64()?;
    let cookieverf = r.get_array::<NFS3_VERFSIZE>()?;
    let (dircount, maxcount) = if plus {
        (r.get_u32()?, r.get_u32()?)
    } else {
        (0, r.get_u32()?)
    };
    Ok(ReaddirArgs {
        dir,
        cookie,
        cookieverf,
        dircount,
        maxcount,
    })
}

/// Decodes the arguments of any procedure (fuzzing and tests): true when
/// they decode.
pub fn decode_any(proc_: u32, args: &[u8]) -> bool {
    let r = &mut XdrReader::new(args);
    match proc_ {
        proc3::NULL => true,
        proc3::GETATTR | proc3::READLINK | proc3::FSSTAT | proc3::FSINFO | proc3::PATHCONF => {
            fh(r).is_ok()
        }
        proc3::SETATTR => setattr(r).is_ok(),
        proc3::LOOKUP | proc3::REMOVE | proc3::RMDIR => DirOpArgs::decode(r).is_ok(),
        proc3::ACCESS => access(r).is_ok(),
        proc3::READ | proc3::COMMIT => range(r).is_ok(),
        proc3::WRITE => write(r, 1 << 20).is_ok(),
        proc3::CREATE => create(r).is_ok(),
        proc3::MKDIR => mkdir(r).is_ok(),
        proc3::SYMLINK => symlink(r).is_ok(),
        proc3::MKNOD => mknod(r).is_ok(),
        proc3::RENAME => rename(r).is_ok(),
        proc3::LINK => link(r).is_ok(),
        proc3::READDIR => readdir(r, false).is_ok(),
        proc3::READDIRPLUS => readdir(r, true).is_ok(),
        _ => false,
    }
}
