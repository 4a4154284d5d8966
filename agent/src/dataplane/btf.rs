//! Where a kernel struct's fields lie, from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//! The signal programs read `struct tcp_sock`'s counters in place; its layout changes with
//! the kernel's version and configuration, so the agent looks each field up by name at load
//! and hands the programs the offsets (the job CO-RE relocations do for C programs, which
//! aya does not do for Rust ones). The verifier checks every read against the same BTF.
//!
//! Only the part of the BTF format this needs is parsed: the header, every type record's
//! length (to walk them), struct members, and the types a member's size comes through.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

// Type kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: its kind, name, `size`/`type` word, and where its trailing data starts.
struct Type {
    kind: u32,
    name: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    extra: usize,
}

/// A parsed BTF blob (types by id; id 0 is `void`).
pub struct Btf<'a> {
    data: &'a [u8],
    types: Vec<Type>,
    strings: &'a [u8],
}

/// A field found: byte offset from the struct's start, and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, String> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or("empty")?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#x} (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?;
        let (start, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        if end > data.len() {
            return Err("type section out of bounds".into());
        }
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = start;
        while at < end {
            let info = u32_at(data, at + 4)?;
            let t = Type {
                name: u32_at(data, at)?,
                kind: (info >> 24) & 0x1f,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 != 0,
                size_or_type: u32_at(data, at + 8)?,
                extra: at + 12,
            };
            let trailing = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                // A kind newer than this parser: its record's length is unknown, and so is
                // where every later record starts.
                kind => return Err(format!("type {} has unknown kind {kind}", types.len())),
            };
            at = t.extra + trailing;
            types.push(t);
        }
        Ok(Self {
            data,
            types,
            strings,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let s = self.strings.get(offset as usize..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn ty(&self, id: u32) -> Result<&Type, String> {
        self.types
            .get(id as usize)
            .ok_or_else(|| format!("no type {id}"))
    }

    /// A type's size in bytes, through typedefs and qualifiers.
    fn size_of(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                KIND_PTR => return Ok(8),
                KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION => {
                    return Ok(t.size_or_type);
                }
                KIND_ARRAY => {
                    let elem = u32_at(self.data, t.extra)?;
                    let n = u32_at(self.data, t.extra + 8)?;
                    return Ok(self.size_of(elem)? * n);
                }
                kind => return Err(format!("type {id} (kind {kind}) has no size")),
            }
        }
        Err("typedef chain too long".into())
    }

    /// The fields of struct `name`, by field name: members, and members of its anonymous
    /// structs and unions. Bitfields are left out (they cannot be read on their own).
    pub fn struct_fields(&self, name: &str) -> Result<HashMap<String, Field>, String> {
        let id = (1..self.types.len() as u32)
            .find(|&id| {
                let t = &self.types[id as usize];
                t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes()
            })
            .ok_or_else(|| format!("no struct {name}"))?;
        let mut fields = HashMap::new();
        self.collect(id, 0, &mut fields, 0)?;
        Ok(fields)
    }

    fn collect(
        &self,
        id: u32,
        base: u32,
        into: &mut HashMap<String, Field>,
        depth: u32,
    ) -> Result<(), String> {
        if depth > 8 {
            return Err("anonymous members nested too deep".into());
        }
        let t = self.ty(id)?;
        for m in 0..t.vlen {
            let at = t.extra + 12 * m;
            let (name, member_type, offset) = (
                u32_at(self.data, at)?,
                u32_at(self.data, at + 4)?,
                u32_at(self.data, at + 8)?,
            );
            let (bit_offset, bitfield) = if t.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24 != 0)
            } else {
                (offset, false)
            };
            if bitfield || bit_offset % 8 != 0 {
                continue;
            }
            let offset = base + bit_offset / 8;
            if name == 0 {
                let inner = self.resolved(member_type)?;
                if matches!(self.ty(inner)?.kind, KIND_STRUCT | KIND_UNION) {
                    self.collect(inner, offset, into, depth + 1)?;
                }
                continue;
            }
            let field = Field {
                offset,
                size: self.size_of(member_type)?,
            };
            into.insert(String::from_utf8_lossy(self.name(name)).into_owned(), field);
        }
        Ok(())
    }

    /// A type id through typedefs and qualifiers.
    fn resolved(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            if !matches!(
                t.kind,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
            ) {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        Err("typedef chain too long".into())
    }
}

/// The offsets of the kernel fields the signal programs read, checked against the sizes
/// they read them with: (global, offset), in `kernel_fields::ALL`'s order.
pub fn kernel_field_offsets(btf: &[u8]) -> Result<Vec<(&'static str, u32)>, String> {
    use sluice_common::maps::kernel_fields;
    let btf = Btf::parse(btf)?;
    let mut structs = HashMap::new();
    kernel_fields::ALL
        .iter()
        .map(|&(global, strukt, name, size)| {
            if !structs.contains_key(strukt) {
                structs.insert(strukt, btf.struct_fields(strukt)?);
            }
            match structs[strukt].get(name) {
                Some(f) if f.size == size => Ok((global, f.offset)),
                Some(f) => Err(format!(
                    "struct {strukt}'s {name} is {} bytes here, sluice reads {size}",
                    f.size
                )),
                None => Err(format!(
                    "struct {strukt} has no {name} (the signal programs need Linux 6.7 or later)"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal BTF blob: `unsigned int` (4 bytes), `typedef unsigned int u32`, and
    /// `struct s { u32 a; struct { u32 b; }; u32 c:3; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0unsigned int\0u32\0s\0a\0b\0c\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("name") as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // [1] INT "unsigned int", 4 bytes, 32 bits.
        push(&[name("unsigned int"), KIND_INT << 24, 4, 32]);
        // [2] TYPEDEF u32 -> 1.
        push(&[name("u32"), KIND_TYPEDEF << 24, 1]);
        // [3] anonymous STRUCT { u32 b; } (4 bytes).
        push(&[0, (KIND_STRUCT << 24) | 1, 4, name("b"), 2, 0]);
        // [4] STRUCT s (kind_flag: bitfield offsets) { a @0, <anon> @32, c:3 @64 }.
        push(&[
            name("s"),
            (1 << 31) | (KIND_STRUCT << 24) | 3,
            12,
            name("a"),
            2,
            0,
            0,
            3,
            32,
            name("c"),
            2,
            (3 << 24) | 64,
        ]);
        let mut out = Vec::new();
        for w in [
            0x0001_eb9fu32,
            24,
            0,
            types.len() as u32,
            types.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(&types);
        out.extend(&strings);
        out
    }

    #[test]
    fn finds_members_and_those_of_anonymous_structs_and_skips_bitfields() {
        let data = blob();
        let fields = Btf::parse(&data)
            .expect("parse")
            .struct_fields("s")
            .expect("s");
        assert_eq!(fields["a"], Field { offset: 0, size: 4 });
        assert_eq!(fields["b"], Field { offset: 4, size: 4 });
        assert!(!fields.contains_key("c"), "{:?}", fields.keys());
        assert!(
            Btf::parse(&data)
                .expect("parse")
                .struct_fields("t")
                .is_err()
        );
    }

    #[test]
    fn a_kind_newer_than_the_parser_is_an_error_not_a_misread() {
        let mut data = blob();
        // The first type record starts after the 24-byte header; its info word is second.
        data[28..32].copy_from_slice(&(25u32 << 24).to_le_bytes());
        let err = Btf::parse(&data).err().expect("refused");
        assert!(err.contains("unknown kind 25"), "{err}");
    }

    #[test]
    fn the_running_kernel_has_every_field() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true, and this kernel has no /sys/kernel/btf/vmlinux"
            );
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this host");
            return;
        };
        let offsets = kernel_field_offsets(&data).expect("kernel fields");
        assert_eq!(offsets.len(), 6);
        // The cookie is in sock_common, the start of every socket; the counters come after
        // tcp_sock's inet_connection_sock, well over a kilobyte in.
        assert!(offsets[0].1 > 0 && offsets[0].1 < 200, "{offsets:?}");
        assert!(
            offsets[1..].iter().all(|&(_, off)| off > 1000),
            "{offsets:?}"
        );
    }
}
