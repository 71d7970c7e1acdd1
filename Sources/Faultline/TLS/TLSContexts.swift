import Crypto
import FaultlineRules
import Foundation
import NIOSSL
import Prometheus
import NIOConcurrencyHelpers
import X509

/// The TLS side of a listener: one server context with a good certificate for its names, and
/// one per certificate fault of its rules, all minted when the rules are applied (so that a
/// reload switches them without touching established connections). Which one a connection
/// gets is decided once, when it is accepted.
struct TLSContexts: Sendable {
    let normal: NIOSSLContext
    /// `tls.handshake_timeout`: accept to the end of the handshake.
    let handshakeTimeout: Duration
    /// By fault rule name.
    let faulty: [String: NIOSSLContext]
    /// `faultline_tls_handshakes_total` of the listener, by result.
    let handshakes: [HandshakeResult: Counter]
    /// What the listener speaks unless a fault says otherwise: TLS 1.2 and 1.3, as Envoy and
    /// HAProxy by default (NIOSSL's own default would take TLS 1.0). The `old_protocol`
    /// handshake fault is then the one way a client meets TLS 1.0 here.
    static let minimumVersion = TLSVersion.tlsv12

    init(settings: TLSSettings, faults: [FaultRule], authorities: CertificateAuthorities, listener: String,
         metrics: FaultlineMetrics) throws {
        handshakes = metrics.tlsHandshakes(listener)
        handshakeTimeout = settings.handshakeTimeout
        let minting = LeafMinting(authorities: authorities, minted: metrics.certificatesMinted)
        let ca = try authorities.main()

        /// A context presenting `kind` for the listed names, and, when the block lists none,
        /// for the name each client asks for (minted on first use, then cached).
        func context(_ kind: LeafKind, adjust: (inout TLSConfiguration) throws -> Void = { _ in }) throws -> NIOSSLContext {
            let leaf = try minting.leaf(kind, names: settings.names)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: leaf.chain.map { .certificate($0) }, privateKey: .privateKey(leaf.key))
            if settings.namesFromSNI, kind != .wrongHost {
                configuration.sslContextCallback = { values, promise in
                    guard let host = values.serverHostname, let leaf = try? minting.leaf(kind, names: [host], fromSNI: true) else {
                        promise.succeed(.noChanges)
                        return
                    }
                    var override = NIOSSLContextConfigurationOverride()
                    override.certificateChain = leaf.chain.map { .certificate($0) }
                    override.privateKey = .privateKey(leaf.key)
                    promise.succeed(override)
                }
            }
            configuration.minimumTLSVersion = Self.minimumVersion
            try adjust(&configuration)
            return try NIOSSLContext(configuration: configuration)
        }

        /// The user's own certificate and key, if the block names them: the good certificate.
        func ownContext(adjust: (inout TLSConfiguration) throws -> Void = { _ in }) throws -> NIOSSLContext? {
            guard let certificateFile = settings.certificateFile, let keyFile = settings.keyFile else { return nil }
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
                let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
                var configuration = TLSConfiguration.makeServerConfiguration(
                    certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
                configuration.minimumTLSVersion = Self.minimumVersion
                try adjust(&configuration)
                return try NIOSSLContext(configuration: configuration)
            } catch {
                throw CertificateAuthorityError(description: "tls: cannot use \(certificateFile) and \(keyFile): \(error)")
            }
        }

        var faulty: [String: NIOSSLContext] = [:]
        for rule in faults {
            switch rule.action {
            case .handshake(let fault):
                switch fault.kind {
                case .old_protocol:
                    let oldProtocol: (inout TLSConfiguration) -> Void = {
                        $0.minimumTLSVersion = .tlsv1
                        $0.maximumTLSVersion = .tlsv1
                    }
                    faulty[rule.name] = try ownContext(adjust: oldProtocol) ?? context(.good, adjust: oldProtocol)
                case .client_certificate:
                    let root = try NIOSSLCertificate(bytes: Array(ca.certificate.serializeAsPEM().pemString.utf8), format: .pem)
                    let requireClient: (inout TLSConfiguration) -> Void = {
                        $0.certificateVerification = .noHostnameVerification
                        $0.trustRoots = .certificates([root])
                    }
                    faulty[rule.name] = try ownContext(adjust: requireClient) ?? context(.good, adjust: requireClient)
                case .alert:
                    // Failing the certificate choice makes BoringSSL end the handshake with a
                    // fatal alert right after the client's hello.
                    let failHello: (inout TLSConfiguration) -> Void = {
                        $0.sslContextCallback = { _, promise in
                            promise.fail(CertificateAuthorityError(description: "handshake fault: alert"))
                        }
                    }
                    faulty[rule.name] = try ownContext(adjust: failHello) ?? context(.good, adjust: failHello)
                case .close, .delay:
                    continue  // the good certificate, behind a HandshakeGate
                }
            case .certificate(let fault):
                let kind: LeafKind
                switch fault.kind {
                case .expired: kind = .expired
                case .not_yet_valid: kind = .notYetValid
                case .expiring_soon: kind = .expiringSoon(seconds: Int(fault.within.components.seconds))
                case .wrong_host: kind = .wrongHost
                case .self_signed: kind = .selfSigned
                case .untrusted_root: kind = .untrustedRoot
                }
                faulty[rule.name] = try context(kind)
            default:
                continue
            }
        }
        self.faulty = faulty
        normal = try ownContext() ?? context(.good)
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
                case .old_protocol, .client_certificate, .alert: gate = nil
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

/// What a leaf certificate is made to be: good, or one of the certificate faults.
enum LeafKind: Hashable, Sendable {
    case good
    case expired
    case notYetValid
    case expiringSoon(seconds: Int)
    case wrongHost
    case selfSigned
    case untrustedRoot

    /// How long a cached leaf of this kind still is what it claims to be: a not-yet-valid
    /// leaf becomes valid after a day, an expiring-soon one must not expire in use.
    var reuseFor: TimeInterval {
        switch self {
        case .notYetValid: 3600
        case .expiringSoon(let seconds): max(1, min(3600, Double(seconds) / 4))
        default: 30 * 86400
        }
    }
}

/// A leaf as NIOSSL takes it: the certificate, the chain above it, and its key.
struct Leaf: Sendable {
    let chain: [NIOSSLCertificate]
    let key: NIOSSLPrivateKey
}

/// Leaves from the CA's cache, minted (and counted in
/// `faultline_tls_certificates_minted_total`) only when none fits: rule reloads and repeated
/// SNI names reuse them, so minting is never on the path of an ordinary connection.
struct LeafMinting: Sendable {
    let authorities: CertificateAuthorities
    let minted: Counter

    func leaf(_ kind: LeafKind, names: [String], fromSNI: Bool = false) throws -> Leaf {
        try authorities.cachedLeaf(LeafKey(kind: kind, names: names), limitForSNI: fromSNI) {
            minted.increment()
            return try mint(kind, names: names)
        }
    }

    private func mint(_ kind: LeafKind, names: [String]) throws -> Leaf {
        let ca = try authorities.main()
        let now = Date()
        let day: TimeInterval = 86400
        let chain: [Certificate] = []
        let material: (certificate: Certificate, key: Certificate.PrivateKey)
        switch kind {
        case .good:
            material = try ca.leaf(names: names, notBefore: now - day, notAfter: now + 365 * day)
        case .expired:
            material = try ca.leaf(names: names, notBefore: now - 30 * day, notAfter: now - day)
        case .notYetValid:
            material = try ca.leaf(names: names, notBefore: now + day, notAfter: now + 30 * day)
        case .expiringSoon(let seconds):
            material = try ca.leaf(names: names, notBefore: now - day, notAfter: now + Double(seconds))
        case .wrongHost:
            material = try ca.leaf(names: ["wrong-host.faultline.invalid"], notBefore: now - day, notAfter: now + 365 * day)
        case .selfSigned:
            material = try ca.leaf(names: names, notBefore: now - day, notAfter: now + 365 * day, selfSigned: true)
        case .untrustedRoot:
            // Signed by a second CA that is not sent along: clients cannot find an issuer
            // they trust (openssl's verify code 20), as with a certificate from a CA that
            // was never rolled out to them.
            let untrusted = try authorities.untrusted()
            material = try untrusted.leaf(names: names, notBefore: now - day, notAfter: now + 365 * day)
        }
        let certificates = try ([material.certificate] + chain).map {
            try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().pemString.utf8), format: .pem)
        }
        let key = try NIOSSLPrivateKey(bytes: Array(material.key.serializeAsPEM().pemString.utf8), format: .pem)
        return Leaf(chain: certificates, key: key)
    }
}

struct LeafKey: Hashable, Sendable {
    var kind: LeafKind
    var names: [String]
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
    /// Names clients may have certificates minted for (SNI) before new names get the listed
    /// ones instead: random names from clients must not grow memory or cost CPU without end.
    static let sniLeafLimit = 1024

    private let folder: String?
    private let cached = NIOLockedValueBox<(main: CertificateAuthority?, untrusted: CertificateAuthority?)>((nil, nil))
    private let leaves = NIOLockedValueBox<[LeafKey: (leaf: Leaf, mintedAt: Date)]>([:])

    /// `folder` nil: a CA in memory for this run only.
    public init(folder: String?) {
        self.folder = folder
    }

    public func main() throws -> CertificateAuthority {
        if let ca = cached.withLockedValue({ $0.main }) { return ca }
        let ca = try folder.map { try CertificateAuthority.loadOrCreate(in: $0) } ?? CertificateAuthority.make(commonName: "Faultline CA")
        return cached.withLockedValue { state in
            if let existing = state.main { return existing }
            state.main = ca
            return ca
        }
    }

    /// A leaf from the cache, or `make`'s, cached. For SNI names, nil once the cache is full.
    func cachedLeaf(_ key: LeafKey, limitForSNI: Bool, make: () throws -> Leaf) throws -> Leaf {
        let now = Date()
        if let entry = leaves.withLockedValue({ $0[key] }), now.timeIntervalSince(entry.mintedAt) < key.kind.reuseFor {
            return entry.leaf
        }
        if limitForSNI, leaves.withLockedValue({ $0.count }) >= Self.sniLeafLimit {
            throw CertificateAuthorityError(description: "too many names minted for; the listed names serve")
        }
        let leaf = try make()
        leaves.withLockedValue { $0[key] = (leaf, now) }
        return leaf
    }

    /// The main CA if it has been loaded or made (nil before any TLS listener needed it).
    public var loaded: CertificateAuthority? { cached.withLockedValue { $0.main } }

    func untrusted() throws -> CertificateAuthority {
        if let ca = cached.withLockedValue({ $0.untrusted }) { return ca }
        let ca = try CertificateAuthority.make(commonName: "Faultline untrusted CA")
        return cached.withLockedValue { state in
            if let existing = state.untrusted { return existing }
            state.untrusted = ca
            return ca
        }
    }
}
