/*
 * libcapstone.so.4 for QEMU without a disassembler.
 *
 * QEMU links Debian's capstone 4 only to print guest instructions (-d in_asm/out_asm logs, the
 * monitor's x/i). Loading the real library costs every QEMU process ~1.3 MiB of private memory:
 * its big instruction tables are relocated at load time. frakpyd puts this file first on QEMU's
 * LD_LIBRARY_PATH unless a handler sets qemu_capstone = true. Every function of the capstone 4
 * API exists, so any QEMU build links against it; cs_open() reports that no architecture is
 * supported, and QEMU then prints the bytes as hex instead of disassembly.
 *
 * Error codes and types follow capstone 4's capstone.h: csh is a size_t handle, cs_err an int
 * (CS_ERR_OK 0, CS_ERR_ARCH 2, CS_ERR_HANDLE 3, CS_ERR_CSH 4), cs_disasm_iter returns bool.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef size_t csh;
typedef struct cs_insn cs_insn;

enum { STUB_ERR_OK = 0, STUB_ERR_ARCH = 2, STUB_ERR_CSH = 4 };

unsigned int cs_version(int *major, int *minor)
{
    if (major)
        *major = 4;
    if (minor)
        *minor = 0;
    return (4u << 8) | 0u;
}

bool cs_support(int query) { (void)query; return false; }

int cs_open(int arch, int mode, csh *handle)
{
    (void)arch; (void)mode;
    if (handle)
        *handle = 0;
    return STUB_ERR_ARCH;
}

int cs_close(csh *handle) { return handle && *handle == 0 ? STUB_ERR_OK : STUB_ERR_CSH; }
int cs_option(csh handle, int type, size_t value) { (void)handle; (void)type; (void)value; return STUB_ERR_CSH; }
int cs_errno(csh handle) { (void)handle; return STUB_ERR_CSH; }
const char *cs_strerror(int code) { (void)code; return "capstone is not loaded (frakpy's stub library)"; }

size_t cs_disasm(csh handle, const uint8_t *code, size_t code_size, uint64_t address, size_t count,
                 cs_insn **insn)
{
    (void)handle; (void)code; (void)code_size; (void)address; (void)count;
    if (insn)
        *insn = NULL;
    return 0;
}

/* the deprecated name of cs_disasm, still exported by capstone 4 */
size_t cs_disasm_ex(csh handle, const uint8_t *code, size_t code_size, uint64_t address, size_t count,
                    cs_insn **insn)
{
    return cs_disasm(handle, code, code_size, address, count, insn);
}

void cs_free(cs_insn *insn, size_t count) { (void)insn; (void)count; }
cs_insn *cs_malloc(csh handle) { (void)handle; return NULL; }

bool cs_disasm_iter(csh handle, const uint8_t **code, size_t *size, uint64_t *address, cs_insn *insn)
{
    (void)handle; (void)code; (void)size; (void)address; (void)insn;
    return false;
}

const char *cs_reg_name(csh handle, unsigned int reg_id) { (void)handle; (void)reg_id; return NULL; }
const char *cs_insn_name(csh handle, unsigned int insn_id) { (void)handle; (void)insn_id; return NULL; }
const char *cs_group_name(csh handle, unsigned int group_id) { (void)handle; (void)group_id; return NULL; }
bool cs_insn_group(csh handle, const cs_insn *insn, unsigned int group_id) { (void)handle; (void)insn; (void)group_id; return false; }
bool cs_reg_read(csh handle, const cs_insn *insn, unsigned int reg_id) { (void)handle; (void)insn; (void)reg_id; return false; }
bool cs_reg_write(csh handle, const cs_insn *insn, unsigned int reg_id) { (void)handle; (void)insn; (void)reg_id; return false; }
int cs_op_count(csh handle, const cs_insn *insn, unsigned int op_type) { (void)handle; (void)insn; (void)op_type; return -1; }
int cs_op_index(csh handle, const cs_insn *insn, unsigned int op_type, unsigned int position)
{
    (void)handle; (void)insn; (void)op_type; (void)position;
    return -1;
}

int cs_regs_access(csh handle, const cs_insn *insn, uint16_t *regs_read, uint8_t *regs_read_count,
                   uint16_t *regs_write, uint8_t *regs_write_count)
{
    (void)handle; (void)insn; (void)regs_read; (void)regs_write;
    if (regs_read_count)
        *regs_read_count = 0;
    if (regs_write_count)
        *regs_write_count = 0;
    return STUB_ERR_CSH;
}
