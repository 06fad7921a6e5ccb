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

/// Where kfunc ids found in vmlinux are kept until the next boot. Reading vmlinux's BTF (5 MB
/// through sysfs, 4 KiB a read) and scanning it took about 5 ms of each plugin ADD with the
/// fast path; the file is one small read. Its text: `boot <boot_id>`, then `<name> <id>` lines.
pub(crate) const CACHE: &str = "/run/weft/kfunc-btf-ids";

/// [`kfunc_btf_ids`] through the file `cache` (see [`CACHE`]): its ids when it was written in
/// boot `boot` and names them all, else vmlinux's, then written there for the next caller
/// (best effort: a cache that cannot be written costs only time). The bool is true when the
/// ids came from the file, so that a caller whose program the verifier refuses can look again.
pub(crate) fn cached_kfunc_btf_ids<const N: usize>(
    names: [&str; N],
    cache: &std::path::Path,
    boot: &str,
) -> Result<([u32; N], bool)> {
    let text = std::fs::read_to_string(cache).unwrap_or_default();
    if let Some(ids) = parse_cache(&text, boot, names) {
        return Ok((ids, true));
    }
    let ids = kfunc_btf_ids(names)?;
    if !boot.is_empty() {
        let mut out = format!("boot {boot}\n");
        for (name, id) in names.iter().zip(ids) {
            out.push_str(&format!("{name} {id}\n"));
        }
        let _ = crate::files::replace(cache, &out);
    }
    Ok((ids, false))
}

/// The ids of `names` in cache text `text`, if it was written in boot `boot` and has them all.
fn parse_cache<const N: usize>(text: &str, boot: &str, names: [&str; N]) -> Option<[u32; N]> {
    let mut lines = text.lines();
    if boot.is_empty() || lines.next()? != format!("boot {boot}") {
        return None;
    }
    let found: Vec<(&str, u32)> = lines
        .filter_map(|l| {
            let (name, id) = l.split_once(' ')?;
            Some((name, id.parse().ok()?))
        })
        .collect();
    let mut ids = [0; N];
    for (id, name) in ids.iter_mut().zip(names) {
        *id = found.iter().find(|(n, _)| *n == name)?.1;
    }
    Some(ids)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_text_is_used_only_for_this_boot_and_complete() {
        let text = "boot b1\nbpf_skb_ct_lookup 101\nbpf_ct_release 102\n";
        let names = ["bpf_skb_ct_lookup", "bpf_ct_release"];
        assert_eq!(parse_cache(text, "b1", names), Some([101, 102]));
        assert_eq!(parse_cache(text, "b2", names), None, "another boot");
        assert_eq!(parse_cache(text, "", names), None, "boot unknown");
        assert_eq!(parse_cache(text, "b1", ["bpf_ct_insert_entry"]), None);
        assert_eq!(
            parse_cache("boot b1\nbpf_ct_release x\n", "b1", ["bpf_ct_release"]),
            None
        );
        assert_eq!(parse_cache("", "b1", names), None);
    }

    /// Needs /sys/kernel/btf/vmlinux (any Linux 6.x built with BTF; no privilege).
    #[test]
    fn cached_ids_match_vmlinux_and_a_stale_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("sub").join("ids");
        let names = ["bpf_skb_ct_lookup", "bpf_ct_release"];
        let want = kfunc_btf_ids(names).unwrap();
        let boot = crate::files::boot_id();
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        std::fs::write(
            &cache,
            "boot not-this-one\nbpf_skb_ct_lookup 1\nbpf_ct_release 2\n",
        )
        .unwrap();
        assert_eq!(
            cached_kfunc_btf_ids(names, &cache, &boot).unwrap(),
            (want, false)
        );
        assert_eq!(
            cached_kfunc_btf_ids(names, &cache, &boot).unwrap(),
            (want, true)
        );
        let text = std::fs::read_to_string(&cache).unwrap();
        assert!(text.starts_with("boot "), "{text}");
        assert_eq!(
            std::fs::read_dir(cache.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
