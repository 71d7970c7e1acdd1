import Crypto
import FaultlineRules
import Foundation
import NIOSSL
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

    init(settings: TLSSettings, faults: [FaultRule], authorities: CertificateAuthorities) throws {
        let ca = try authorities.main()
        let now = Date()
        func context(_ material: (certificate: Certificate, key: Certificate.PrivateKey), chain: [Certificate] = []) throws -> NIOSSLContext {
            let certificates = try ([material.certificate] + chain).map {
                try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().pemString.utf8), format: .pem)
            }
            let key = try NIOSSLPrivateKey(bytes: Array(material.key.serializeAsPEM().pemString.utf8), format: .pem)
            let configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: certificates.map { .certificate($0) }, privateKey: .privateKey(key))
            return try NIOSSLContext(configuration: configuration)
        }
        let day: TimeInterval = 86400
        normal = try context(ca.leaf(names: settings.names, notBefore: now - day, notAfter: now + 365 * day))
        var faulty: [String: NIOSSLContext] = [:]
        for rule in faults {
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
                let untrusted = try authorities.untrusted()
                faulty[rule.name] = try context(
                    untrusted.leaf(names: settings.names, notBefore: now - day, notAfter: now + 365 * day),
                    chain: [untrusted.certificate])
                continue
            }
            faulty[rule.name] = try context(material)
        }
        self.faulty = faulty
    }

    /// The context for a new connection: the first enabled certificate fault that targets the
    /// client and wins its draw, or the good certificate.
    func choose(faults: [FaultRule], clientAddress: [UInt8]?, random: inout FaultRandom) -> (NIOSSLContext, FaultRule?) {
        for rule in faults where rule.enabled && rule.targets(clientAddress: clientAddress) {
            guard case .certificate = rule.action, let context = faulty[rule.name] else { continue }
            if rule.probability < 1, !(random.unit() < rule.probability) { continue }
            return (context, rule)
        }
        return (normal, nil)
    }
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
