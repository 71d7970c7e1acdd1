import FaultlineRules

/// What one fault does to one HTTP request. Concrete: delays are already drawn.
public enum RequestFault: Sendable, Equatable {
    /// Hold the request this long before it is forwarded.
    case delayRequest(nanoseconds: Int64)
    /// Hold the response this long before its first byte goes to the client.
    case delayResponse(nanoseconds: Int64)
    /// Answer with this response; the upstream is not contacted.
    case abort(HTTPAbort)
    /// RST the client connection: at once (`nil`), or after this many response body bytes.
    case reset(afterBodyBytes: Int?)
    /// Pass this many response body bytes, then close the connection (a truncated body).
    case truncate(bodyBytes: Int)
    /// Never answer; with `closeAfter`, close the connection after that long.
    case blackhole(closeAfter: Duration?)
    /// Response body at most this many bytes per second.
    case throttle(bytesPerSecond: Int)

    public var kind: String {
        switch self {
        case .delayRequest, .delayResponse: "latency"
        case .abort: "abort"
        case .reset: "reset"
        case .truncate: "limit"
        case .blackhole: "blackhole"
        case .throttle: "bandwidth"
        }
    }
}

/// The request as fault matching sees it. Header values and the client's address are looked
/// up by closures that the caller passes without storing them (no allocation), and only when
/// a rule asks: every request of a listener with rules comes through here, and most match
/// nothing.
public struct RequestFacts {
    public var method: String
    /// Without the query string.
    public var path: Substring

    public init(method: String, path: Substring) {
        self.method = method
        self.path = path
    }
}

/// Decides the fault of one HTTP request. Rules are tried in file order and the first that
/// matches wins, its probability included: a request that loses the draw of a rule goes on to
/// the next one. One fault per request, decided when its head arrives.
public enum HTTPFaultPlanner {
    public enum Decision: Equatable {
        case rule(FaultRule, RequestFault)
        /// Asked for by a request header (the listener opted in).
        case header(RequestFault)
        /// A fault header that cannot be understood: the client gets 400 with this reason.
        case badHeader(String)
    }

    /// - Parameters:
    ///   - header: the first value of a header, by lower-case name.
    ///   - clientAddress: 4 or 16 bytes; nil for a UNIX socket client. Asked at most once.
    public static func decide(
        faults: [FaultRule], headerFaults: HeaderFaults, request: RequestFacts, header: (String) -> String?,
        clientAddress: () -> [UInt8]?, random: inout FaultRandom
    ) -> Decision? {
        var address: [UInt8]??
        func lookedUpAddress() -> [UInt8]? {
            if let address { return address }
            let found = clientAddress()
            address = .some(found)
            return found
        }
        if headerFaults.enabled,
            let decision = fromHeaders(headerFaults, header: header, clientAddress: lookedUpAddress)
        {
            return decision
        }
        // By index: `for rule in faults` copies each rule (a retain of each of its strings and
        // arrays) for every request; a rule is copied only when it is the one decided.
        for index in faults.indices {
            guard faults[index].enabled,
                faults[index].clients.isEmpty || faults[index].targets(clientAddress: lookedUpAddress()),
                faults[index].match.matches(method: request.method, path: request.path, header: header)
            else { continue }
            if faults[index].probability < 1, !(random.unit() < faults[index].probability) { continue }
            guard let fault = fault(of: faults[index].action, random: &random) else { continue }
            return .rule(faults[index], fault)
        }
        return nil
    }

    static func fault(of action: FaultAction, random: inout FaultRandom) -> RequestFault? {
        switch action {
        case .latency(let latency):
            let delay = LatencySampler.sample(latency, using: &random)
            return latency.point == .response ? .delayResponse(nanoseconds: delay) : .delayRequest(nanoseconds: delay)
        case .abort(let abort):
            return .abort(abort)
        case .reset(_, let afterBytes):
            return .reset(afterBodyBytes: afterBytes)
        case .limit(let bytes):
            return .truncate(bodyBytes: bytes)
        case .blackhole(let closeAfter):
            return .blackhole(closeAfter: closeAfter)
        case .bandwidth(let rate):
            return .throttle(bytesPerSecond: rate)
        case .slicer, .refuse, .cut, .slowClose:
            return nil  // TCP listeners only (the loader sees to it)
        case .certificate, .handshake:
            return nil  // chosen for the connection's handshake, not per request
        }
    }

    static func fromHeaders(_ settings: HeaderFaults, header: (String) -> String?, clientAddress: () -> [UInt8]?) -> Decision? {
        let delay = header(HeaderFaults.delayHeader)
        let abort = header(HeaderFaults.abortHeader)
        guard delay != nil || abort != nil else { return nil }
        if !settings.clients.isEmpty {
            guard let address = clientAddress(), settings.clients.contains(where: { $0.contains(address) })
            else { return nil }
        }
        if let abort {
            guard let status = Int(abort.trimmingCharacters(in: " \t")), (200...599).contains(status) else {
                return .badHeader("\(HeaderFaults.abortHeader): \"\(abort)\" is not a status from 200 to 599")
            }
            return .header(.abort(HTTPAbort(
                status: status, headers: [.init(name: "Content-Type", value: "text/plain; charset=utf-8")],
                body: "aborted by faultline (\(HeaderFaults.abortHeader))\n")))
        }
        if let delay {
            guard let value = DurationText.parse(delay.trimmingCharacters(in: " \t")), value <= .seconds(600) else {
                return .badHeader("\(HeaderFaults.delayHeader): \"\(delay)\" is not a duration up to 10m (250ms, 1.5s)")
            }
            return .header(.delayRequest(nanoseconds: value.nanoseconds))
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        let drop = Set(set)
        var slice = self[...]
        while let first = slice.first, drop.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, drop.contains(last) { slice = slice.dropLast() }
        return slice
    }
}

extension DurationText {
    static func parse(_ text: Substring) -> Duration? { parse(String(text)) }
}
