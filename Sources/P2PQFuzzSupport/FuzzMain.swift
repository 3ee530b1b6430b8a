// The main program shared by the fuzz targets.
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files (or directories of files) named on the command line through the target's
// entry point, so every target always builds and its corpus doubles as a regression suite.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fuzz target's entry point, as libFuzzer calls it.
public typealias FuzzEntry = @convention(c) (UnsafePointer<UInt8>, Int) -> Int32

#if P2PQ_FUZZ

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: FuzzEntry
) -> Int32

/// Runs libFuzzer with `entry` and the process arguments.
public func fuzzMain(name: String, _ entry: FuzzEntry) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, entry))
}

#else

/// Reads a whole file, or nil if it cannot be read.
func readFile(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n > 0 { bytes.append(contentsOf: buffer[0..<n]) }
        if n < buffer.count { break }
    }
    return ferror(file) == 0 ? bytes : nil
}

/// The regular files in `path` if it is a directory, else `[path]`.
func inputs(at path: String) -> [String] {
    guard let directory = opendir(path) else { return [path] }
    defer { closedir(directory) }
    var files: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        files.append(path + "/" + name)
    }
    return files.sorted()
}

/// Replays every file named on the command line (or inside a named directory) through `entry`.
public func fuzzMain(name: String, _ entry: FuzzEntry) -> Never {
    var replayed = 0
    var unreadable = 0
    for argument in CommandLine.arguments.dropFirst() where !argument.hasPrefix("-") {
        for path in inputs(at: argument) {
            guard let bytes = readFile(path) else {
                unreadable += 1
                continue
            }
            // An empty input has no base address to pass; the targets ignore it anyway.
            bytes.withUnsafeBufferPointer { buffer in
                if let base = buffer.baseAddress, !buffer.isEmpty { _ = entry(base, buffer.count) }
            }
            replayed += 1
        }
    }
    print("\(name): replayed \(replayed) inputs (\(unreadable) unreadable); build with -DP2PQ_FUZZ and -sanitize=fuzzer to fuzz")
    exit(0)
}

#endif
