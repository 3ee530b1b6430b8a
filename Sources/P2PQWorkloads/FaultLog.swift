import Foundation
import Glibc

/// A value in a line of an operation log.
public enum FaultLogValue: Sendable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case strings([String])

    func encode(into out: inout String) {
        switch self {
        case .string(let text): out += Self.quoted(text)
        case .int(let number): out += String(number)
        case .double(let number): out += number.isFinite ? String(number) : "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .strings(let texts):
            out += "["
            out += texts.map(Self.quoted).joined(separator: ",")
            out += "]"
        }
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// The operation log of one workload process: one JSON object per line, with the wall-clock
/// time (`t`, seconds since 1970, so that the logs of several processes and the harness's own
/// line up) and the workload's name (`node`).
///
/// Each line goes out in one `write(2)` on a file opened with `O_APPEND`, so a SIGKILL can cut
/// the log only between lines, and a line written is in the kernel's hands at once.
public final class OperationLog: Sendable {
    private let fd: Int32
    private let node: String

    /// The log file could not be opened.
    public struct OpenError: Error, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot open \(path): \(String(cString: strerror(errno)))" }
    }

    public init(path: String, node: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw OpenError(path: path, errno: errno) }
        self.fd = fd
        self.node = node
    }

    deinit { close(fd) }

    /// Writes one line: `t`, `node`, then `fields` in key order.
    public func write(_ fields: [String: FaultLogValue]) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var line = "{\"t\":" + String(format: "%.6f", Double(time.tv_sec) + Double(time.tv_nsec) / 1e9)
        line += ",\"node\":" + FaultLogValue.quoted(node)
        for key in fields.keys.sorted() {
            line += "," + FaultLogValue.quoted(key) + ":"
            fields[key]!.encode(into: &line)
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        let count = bytes.count
        bytes.withUnsafeMutableBytes { buffer in
            var done = 0
            while done < count {
                let n = Glibc.write(fd, buffer.baseAddress! + done, count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // a full disk: the checker will see the gap, not a crash
                done += n
            }
        }
    }
}

/// The payloads of the workload's items: the item's id (`producer:counter`), a `|`, then
/// padding up to the payload size.
public enum FaultItem {
    public static func payload(producer: String, counter: Int, size: Int) -> [UInt8] {
        var bytes = Array("\(producer):\(counter)|".utf8)
        if bytes.count < size { bytes.append(contentsOf: repeatElement(UInt8(ascii: "."), count: size - bytes.count)) }
        return bytes
    }

    /// The id an item carries, or nil if it is not one of the workload's items.
    public static func id(of payload: [UInt8]) -> String? {
        guard let bar = payload.firstIndex(of: UInt8(ascii: "|")), bar > 0 else { return nil }
        return String(decoding: payload[..<bar], as: UTF8.self)
    }
}
