import CP2PQSystem

/// What the CPU offers that the node's choices depend on.
public enum CPUFeatures {
    /// AES and carry-less multiply instructions (x86-64 AES-NI and PCLMULQDQ, ARMv8 AES and
    /// PMULL): with them AES-256-GCM outruns ChaCha20-Poly1305, without them it is several
    /// times slower. Read from CPUID on x86-64 and from the kernel's hardware capabilities
    /// (`getauxval(AT_HWCAP)`) on ARMv8, once per process.
    public static let hasAESGCMInstructions: Bool = p2pq_cpu_has_aes_gcm() != 0
}
