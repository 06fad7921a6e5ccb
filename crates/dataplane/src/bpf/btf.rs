//! Finding a kernel function's BTF id in `/sys/kernel/btf/vmlinux` (the raw BTF format of
//! linux/btf.h: a header, then the type section, then the string section).

use crate::{Error, Result};

pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_FUNC: u32 = 12;

/// The BTF id of the `BTF_KIND_FUNC` called `name` in vmlinux: what a kfunc call carries.
pub fn kfunc_btf_id(name: &str) -> Result<u32> {
    kfunc_btf_ids([name]).map(|[id]| id)
}

/// Like [`kfunc_btf_id`] for several names, reading vmlinux's BTF (several MB) once.
pub(crate) fn kfunc_btf_ids<const N: usize>(names: [&str; N]) -> Result<[u32; N]> {
    let raw = std::fs::read(VMLINUX).map_err(|e| {
        Error::io(
            format!("read {VMLINUX} (the kernel needs CONFIG_DEBUG_INFO_BTF)"),
            e,
        )
    })?;
    let mut ids = [0; N];
    for (id, name) in ids.iter_mut().zip(names) {
        *id = func_id(&raw, name)?.ok_or_else(|| {
            Error::Invalid(format!(
                "no BTF function {name:?} in {VMLINUX}: this kernel lacks it (too old, or \
                 the module that provides it is not built in)"
            ))
        })?;
    }
    Ok(ids)
}

/// The id of the FUNC `name` in the raw BTF `b`, or None.
pub(crate) fn func_id(b: &[u8], name: &str) -> Result<Option<u32>> {
    let bad = |what: &str| Error::Decode {
        op: format!("parse {VMLINUX}"),
        msg: what.to_string(),
    };
    let u32_at = |off: usize| -> Result<u32> {
        b.get(off..off + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| bad("truncated"))
    };
    if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != BTF_MAGIC {
        return Err(bad("not little-endian raw BTF (bad magic)"));
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let types = hdr_len + type_off..hdr_len + type_off + type_len;
    let strings = b
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or_else(|| bad("string section out of bounds"))?;
    if types.end > b.len() {
        return Err(bad("type section out of bounds"));
    }
    let mut off = types.start;
    let mut id = 1u32;
    while off < types.end {
        let name_off = u32_at(off)? as usize;
        let info = u32_at(off + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == KIND_FUNC {
            let s = strings.get(name_off..).unwrap_or_default();
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            if &s[..end] == name.as_bytes() {
                return Ok(Some(id));
            }
        }
        // Each type is 12 bytes plus a kind-specific tail.
        off += 12
            + match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                _ => 0,
            };
        id += 1;
    }
    Ok(None)
}
