import Crypto
import FaultlineRules
import Foundation
import NIOSSL
import Prometheus
import Synchronization
import X509

/// The TLS side of a listener: one server context with a good certificate for its names, and
/// one per certificate fault of its rules, all minted when the rules are applied (so that a
/// reload switches them without touching established connections). Which one a connection
/// gets is decided once, when it is accepted.
struct TLSContexts: Sendable {
    let normal: NIOSSLContext
    /// By fault rule name.
    let faulty: [String: NIOSSLContext]

    /// `faultline_tls_handshakes_total` of the listener, by result.
    let handshakes: [HandshakeResult: Counter]

    init(settings: TLSSettings, faults: [FaultRule], authorities: CertificateAuthorities, listener: String,
         metrics: FaultlineMetrics) throws {
        handshakes = metrics.tlsHandshakes(listener)
        let minted = metrics.certificatesMinted
        let ca = try MintingCounter(authority: authorities.main(), minted: minted)
        let now = Date()
        func context(_ material: (certificate: Certificate, key: Certificate.PrivateKey), chain: [Certificate] = []) throws -> NIOSSLContext {
            try NIOSSLContext(configuration: Self.configuration(material, chain: chain))
        }
        let day: TimeInterval = 86400
        var faulty: [String: NIOSSLContext] = [:]
        let good = try ca.leaf(names: settings.names, notBefore: now - day, notAfter: now + 365 * day)
        for rule in faults {
            if case .handshake(let fault) = rule.action {
                var configuration = try Self.configuration(good)
                switch fault.kind {
                case .old_protocol:
                    configuration.minimumTLSVersion = .tlsv1
                    configuration.maximumTLSVersion = .tlsv1
                case .client_certificate:
                    configuration.certificateVerification = .noHostnameVerification
                    configuration.trustRoots = .certificates([
                        try NIOSSLCertificate(bytes: Array(ca.authority.certificate.serializeAsPEM().pemString.utf8), format: .pem)
                    ])
                case .close, .delay:
                    continue  // the good certificate, behind a HandshakeGate
                }
                faulty[rule.name] = try NIOSSLContext(configuration: configuration)
                continue
            }
            guard case .certificate(let fault) = rule.action else { continue }
            let material: (certificate: Certificate, key: Certificate.PrivateKey)
            switch fault.kind {
            case .expired:
                material = try ca.leaf(names: settings.names, notBefore: now - 30 * day, notAfter: now - day)
            case .not_yet_valid:
                material = try ca.leaf(names: settings.names, notBefore: now + day, notAfter: now + 30 * day)
            case .expiring_soon:
                let within = Double(fault.within.components.seconds)
                material = try ca.leaf(names: settings.names, notBefore: now - day, notAfter: now + within)
            case .wrong_host:
                material = try ca.leaf(names: ["wrong-host.faultline.invalid"], notBefore: now - day, notAfter: now + 365 * day)
            case .self_signed:
                material = try ca.leaf(names: settings.names, notBefore: now - day, notAfter: now + 365 * day, selfSigned: true)
            case .untrusted_root:
                let untrusted = MintingCounter(authority: try authorities.untrusted(), minted: minted)
                faulty[rule.name] = try context(
                    untrusted.leaf(names: settings.names, notBefore: now - day, notAfter: now + 365 * day),
                    chain: [untrusted.authority.certificate])
                continue
            }
            faulty[rule.name] = try context(material)
        }
        self.faulty = faulty
        normal = try context(good)
    }

    static func configuration(
        _ material: (certificate: Certificate, key: Certificate.PrivateKey), chain: [Certificate] = []
    ) throws -> TLSConfiguration {
        let certificates = try ([material.certificate] + chain).map {
            try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().pemString.utf8), format: .pem)
        }
        let key = try NIOSSLPrivateKey(bytes: Array(material.key.serializeAsPEM().pemString.utf8), format: .pem)
        return TLSConfiguration.makeServerConfiguration(
            certificateChain: certificates.map { .certificate($0) }, privateKey: .privateKey(key))
    }

    /// The context for a new connection: the first enabled certificate fault that targets the
    /// client and wins its draw, or the good certificate.
    func choose(faults: [FaultRule], clientAddress: [UInt8]?, random: inout FaultRandom) -> TLSChoice {
        for rule in faults where rule.enabled && rule.targets(clientAddress: clientAddress) {
            let gate: HandshakeGate.Action?
            switch rule.action {
            case .certificate:
                gate = nil
            case .handshake(let fault):
                switch fault.kind {
                case .close: gate = .close
                case .delay: gate = .delay(fault.delay)
                case .old_protocol, .client_certificate: gate = nil
                }
            default:
                continue
            }
            let context = gate == nil ? faulty[rule.name] : normal
            guard let context else { continue }
            if rule.probability < 1, !(random.unit() < rule.probability) { continue }
            return TLSChoice(context: context, gate: gate, fault: rule)
        }
        return TLSChoice(context: normal, gate: nil, fault: nil)
    }
}

/// A CA whose every minted leaf is counted in `faultline_tls_certificates_minted_total`.
struct MintingCounter {
    let authority: CertificateAuthority
    let minted: Counter

    func leaf(names: [String], notBefore: Date, notAfter: Date, selfSigned: Bool = false) throws
        -> (certificate: Certificate, key: Certificate.PrivateKey)
    {
        let leaf = try authority.leaf(names: names, notBefore: notBefore, notAfter: notAfter, selfSigned: selfSigned)
        minted.increment()
        return leaf
    }
}

/// How a new TLS connection starts: its server context, a gate in front of the handshake
/// (close or delay), and the fault that chose them.
struct TLSChoice {
    var context: NIOSSLContext
    var gate: HandshakeGate.Action?
    var fault: FaultRule?
}

/// The CA from the state folder, loaded or created on first need, and the second,
/// untrusted CA of `untrusted_root`, made once per run.
public final class CertificateAuthorities: Sendable {
    private let folder: String?
    private let cached = Mutex<(main: CertificateAuthority?, untrusted: CertificateAuthority?)>((nil, nil))

    /// `folder` nil: a CA in memory for this run only.
    public init(folder: String?) {
        self.folder = folder
    }

    public func main() throws -> CertificateAuthority {
        if let ca = cached.withLock({ $0.main }) { return ca }
        let ca = try folder.map { try CertificateAuthority.loadOrCreate(in: $0) } ?? CertificateAuthority.make(commonName: "Faultline CA")
        return cached.withLock { state in
            if let existing = state.main { return existing }
            state.main = ca
            return ca
        }
    }

    /// The main CA if it has been loaded or made (nil before any TLS listener needed it).
    public var loaded: CertificateAuthority? { cached.withLock { $0.main } }

    func untrusted() throws -> CertificateAuthority {
        if let ca = cached.withLock({ $0.untrusted }) { return ca }
        let ca = try CertificateAuthority.make(commonName: "Faultline untrusted CA")
        return cached.withLock { state in
            if let existing = state.untrusted { return existing }
            state.untrusted = ca
            return ca
        }
    }
}
