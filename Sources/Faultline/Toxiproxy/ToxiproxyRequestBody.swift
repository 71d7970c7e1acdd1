import Foundation
import NIOCore

/// A request body read the way Toxiproxy's Go decoder reads it: keys match in any case
/// (`"Name"` is `name`), unknown keys are ignored, and a value of the wrong type (a string
/// for a number, a fraction for an integer) is a 400 "bad request body".
struct ToxiproxyRequestBody {
    private let object: [String: Any]

    init(_ body: ByteBuffer) throws(ToxiproxyError) {
        let data = Data(body.readableBytesView)
        guard !data.isEmpty else { throw .badBody("EOF") }
        guard let value = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else {
            throw .badBody("invalid JSON")
        }
        guard let object = value as? [String: Any] else { throw .badBody("expected a JSON object") }
        self.object = object
    }

    init(object: [String: Any]) { self.object = object }

    /// The items of a body that is a JSON array of objects (`/populate`).
    static func array(_ body: ByteBuffer) throws(ToxiproxyError) -> [ToxiproxyRequestBody] {
        let data = Data(body.readableBytesView)
        guard !data.isEmpty else { throw .badBody("EOF") }
        guard let value = try? JSONSerialization.jsonObject(with: data), let items = value as? [Any] else {
            throw .badBody("expected a JSON array of proxies")
        }
        var bodies: [ToxiproxyRequestBody] = []
        for item in items {
            guard let object = item as? [String: Any] else { throw .badBody("expected a JSON array of proxies") }
            bodies.append(ToxiproxyRequestBody(object: object))
        }
        return bodies
    }

    /// The value under `key`, matched exactly or else in any case; nil for missing or null.
    private func raw(_ key: String) -> Any? {
        let value = object[key] ?? object.first { $0.key.lowercased() == key }?.value
        if value is NSNull { return nil }
        return value
    }

    func has(_ key: String) -> Bool { raw(key) != nil }

    func string(_ key: String) throws(ToxiproxyError) -> String? {
        guard let value = raw(key) else { return nil }
        guard let text = value as? String else { throw .badBody("\(key): expected a string") }
        return text
    }

    func bool(_ key: String) throws(ToxiproxyError) -> Bool? {
        guard let value = raw(key) else { return nil }
        guard !(value is String), let number = value as? NSNumber, Self.isBoolean(number) else {
            throw .badBody("\(key): expected true or false")
        }
        return number.boolValue
    }

    func double(_ key: String) throws(ToxiproxyError) -> Double? {
        guard let value = raw(key) else { return nil }
        guard !(value is String), let number = value as? NSNumber, !Self.isBoolean(number) else {
            throw .badBody("\(key): expected a number")
        }
        return number.doubleValue
    }

    /// Integer attributes under `key` (an object), lower-cased names; fractions are refused.
    func integers(_ key: String) throws(ToxiproxyError) -> [String: Int]? {
        guard let value = raw(key) else { return nil }
        guard let attributes = value as? [String: Any] else { throw .badBody("\(key): expected an object") }
        var result: [String: Int] = [:]
        for (name, value) in attributes {
            if value is NSNull { continue }
            guard !(value is String), let number = value as? NSNumber, !Self.isBoolean(number) else {
                throw .badBody("\(key).\(name): expected an integer")
            }
            let double = number.doubleValue
            guard double == double.rounded(), abs(double) < 9.0e15 else {
                throw .badBody("\(key).\(name): expected an integer, not \(double)")
            }
            result[name.lowercased()] = Int(double)
        }
        return result
    }

    /// JSONSerialization hands booleans over as NSNumbers too, of type `c` (a C char).
    private static func isBoolean(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"
    }
}
