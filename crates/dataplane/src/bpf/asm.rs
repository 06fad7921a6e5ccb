//! A minimal eBPF assembler: the instructions the fast-path programs use, and labels for jumps.
//!
//! Jumps name a label; [`Asm::finish`] resolves each to the offset the kernel wants (in
//! instructions, counted from the one after the jump).

use std::collections::HashMap;

use crate::{Error, Result};

/// One 8-byte eBPF instruction (linux/bpf.h `struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register (low nibble of the register byte).
    pub dst: u8,
    /// Source register (high nibble).
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The instruction as the kernel reads it (little-endian host).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// A register, r0 to r10 (r10 is the read-only frame pointer).
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
pub const R10: Reg = 10;

// Instruction classes, operand sources and sizes (linux/bpf_common.h, linux/bpf.h).
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const K: u8 = 0x00;
const X: u8 = 0x08;
const MEM: u8 = 0x60;

/// Access width of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    DW = 0x18,
}

/// ALU operations used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Xor = 0xa0,
    Mov = 0xb0,
}

/// Conditional jumps used here (unsigned comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ne = 0x50,
    Lt = 0xa0,
    Le = 0xb0,
}

/// `BPF_PSEUDO_KFUNC_CALL`: the call's imm is a BTF id in vmlinux.
const PSEUDO_KFUNC_CALL: u8 = 2;

/// A program being assembled.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<String, usize>,
    /// (instruction index, label) of every jump still to resolve.
    fixups: Vec<(usize, String)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Instructions emitted so far.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    fn emit(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
        self
    }

    /// Marks the next instruction as `name`. A label is defined once.
    pub fn label(&mut self, name: &str) -> Result<&mut Asm> {
        if self
            .labels
            .insert(name.to_string(), self.insns.len())
            .is_some()
        {
            return Err(Error::Invalid(format!(
                "BPF assembler: label {name:?} defined twice"
            )));
        }
        Ok(self)
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | X | Alu::Mov as u8, dst, src, 0, 0)
    }

    /// `dst op= imm` (64-bit, imm sign-extended).
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU64 | K | op as u8, dst, 0, 0, imm)
    }

    /// `dst op= src` (64-bit).
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Asm {
        self.emit(ALU64 | X | op as u8, dst, src, 0, 0)
    }

    /// `dst = htons(dst)`: the low 16 bits in network order (`BPF_END | BPF_TO_BE`, 16).
    pub fn to_be16(&mut self, dst: Reg) -> &mut Asm {
        self.emit(ALU | X | 0xd0, dst, 0, 0, 16)
    }

    /// `dst op= imm` on the low 32 bits (the upper half is zeroed).
    pub fn alu32_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Asm {
        self.emit(ALU | K | op as u8, dst, 0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.emit(LDX | MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.emit(STX | MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.emit(ST | MEM | size as u8, dst, 0, off, imm)
    }

    /// `if dst cond imm goto label` (64-bit compare, imm sign-extended).
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &str) -> &mut Asm {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.emit(JMP | K | cond as u8, dst, 0, 0, imm)
    }

    /// `if (u32)dst cond (u32)imm goto label`.
    pub fn jump32_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &str) -> &mut Asm {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.emit(JMP32 | K | cond as u8, dst, 0, 0, imm)
    }

    /// `if dst cond src goto label` (64-bit).
    pub fn jump_reg(&mut self, cond: Cond, dst: Reg, src: Reg, label: &str) -> &mut Asm {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.emit(JMP | X | cond as u8, dst, src, 0, 0)
    }

    /// `goto label`.
    pub fn goto(&mut self, label: &str) -> &mut Asm {
        self.fixups.push((self.insns.len(), label.to_string()));
        self.emit(JMP, 0, 0, 0, 0)
    }

    /// Calls helper number `id` (linux/bpf.h `__BPF_FUNC_MAPPER`).
    pub fn call_helper(&mut self, id: i32) -> &mut Asm {
        self.emit(JMP | 0x80, 0, 0, 0, id)
    }

    /// Calls the kernel function with BTF id `btf_id` in vmlinux (see [`super::kfunc_btf_id`]).
    pub fn call_kfunc(&mut self, btf_id: u32) -> &mut Asm {
        self.emit(JMP | 0x80, 0, PSEUDO_KFUNC_CALL, 0, btf_id as i32)
    }

    /// `return r0`.
    pub fn exit(&mut self) -> &mut Asm {
        self.emit(JMP | 0x90, 0, 0, 0, 0)
    }

    /// The instructions with every jump resolved; an unknown label or an offset beyond 16 bits
    /// is an error.
    pub fn finish(mut self) -> Result<Vec<Insn>> {
        for (at, label) in &self.fixups {
            let at = *at;
            let target = *self.labels.get(label).ok_or_else(|| {
                Error::Invalid(format!("BPF assembler: jump to undefined label {label:?}"))
            })?;
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).map_err(|_| {
                Error::Invalid(format!(
                    "BPF assembler: jump to {label:?} spans {off} instructions"
                ))
            })?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_resolve_forward_and_backward() {
        let mut a = Asm::new();
        a.label("top").unwrap();
        a.mov(R6, R1); // 0
        a.jump_imm(Cond::Ne, R5, 8, "out"); // 1 -> 4: off 2
        a.jump_reg(Cond::Gt, R4, R3, "top"); // 2 -> 0: off -3
        a.goto("out"); // 3 -> 4: off 0
        a.label("out").unwrap();
        a.alu64_imm(Alu::Mov, R0, 0); // 4
        a.exit(); // 5
        let insns = a.finish().unwrap();
        assert_eq!(insns.len(), 6);
        assert_eq!(insns[1].off, 2);
        assert_eq!(insns[2].off, -3);
        assert_eq!(insns[3].off, 0);
        // Encoding: code, src << 4 | dst, off (LE), imm (LE).
        assert_eq!(insns[1].encode(), [0x55, 0x05, 2, 0, 8, 0, 0, 0]);
        assert_eq!(insns[2].encode(), [0x2d, 0x34, 0xfd, 0xff, 0, 0, 0, 0]);
        assert_eq!(insns[0].encode(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(insns[5].encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn opcodes_match_the_kernel_numbers() {
        let mut a = Asm::new();
        a.load(Size::W, R2, R6, 76)
            .load(Size::H, R5, R2, 12)
            .load(Size::B, R5, R2, 22)
            .store(Size::W, R10, -80, R5)
            .store_imm(Size::DW, R10, -96, 0)
            .store_imm(Size::B, R10, -64, 2)
            .alu32_imm(Alu::And, R5, 0xff)
            .call_kfunc(1234)
            .call_helper(69);
        let codes: Vec<u8> = a.finish().unwrap().iter().map(|i| i.code).collect();
        assert_eq!(
            codes,
            [0x61, 0x69, 0x71, 0x63, 0x7a, 0x72, 0x54, 0x85, 0x85]
        );
    }

    #[test]
    fn undefined_and_duplicate_labels_are_errors() {
        let mut a = Asm::new();
        a.goto("nowhere");
        let err = a.finish().unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
        let mut a = Asm::new();
        a.label("x").unwrap();
        assert!(a.label("x").is_err());
    }
}
