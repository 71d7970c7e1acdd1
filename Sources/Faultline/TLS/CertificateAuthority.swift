import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// Faultline's own certificate authority: it signs the leaf certificates that TLS listeners
/// present, so that clients which trust it (`faultlined ca export`) see a good certificate,
/// and the certificate faults can present a bad one on purpose. Created on first use and kept
/// in the state folder (`ca.pem`, and `ca-key.pem` with mode 0600).
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    let key: Certificate.PrivateKey

    public var pem: String { (try? certificate.serializeAsPEM().pemString) ?? "" }

    /// Loads the CA from `folder`, or creates it there (the folder too, mode 0700).
    public static func loadOrCreate(in folder: String) throws -> CertificateAuthority {
        let certificatePath = folder + "/ca.pem"
        let keyPath = folder + "/ca-key.pem"
        if FileManager.default.fileExists(atPath: certificatePath) {
            do {
                let certificate = try Certificate(pemEncoded: try String(contentsOfFile: certificatePath, encoding: .utf8))
                let key = try Certificate.PrivateKey(pemEncoded: try String(contentsOfFile: keyPath, encoding: .utf8))
                return CertificateAuthority(certificate: certificate, key: key)
            } catch {
                throw CertificateAuthorityError(description: "cannot read the CA in \(folder): \(error)")
            }
        }
        let authority = try make(commonName: "Faultline CA")
        do {
            try FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            // The key is written with mode 0600 from its first byte.
            let fd = open(keyPath, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { throw CertificateAuthorityError(description: "cannot create \(keyPath): \(String(cString: strerror(errno)))") }
            let keyBytes = Array(try authority.key.serializeAsPEM().pemString.utf8)
            let written = write(fd, keyBytes, keyBytes.count)
            close(fd)
            guard written == keyBytes.count else { throw CertificateAuthorityError(description: "cannot write \(keyPath)") }
            try authority.pem.write(toFile: certificatePath, atomically: true, encoding: .utf8)
        } catch let error as CertificateAuthorityError {
            throw error
        } catch {
            throw CertificateAuthorityError(description: "cannot keep the CA in \(folder): \(error)")
        }
        return authority
    }

    /// A CA in memory only (the second, untrusted root of `untrusted_root`, and tests).
    public static func make(commonName: String) throws -> CertificateAuthority {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            CommonName(commonName)
            OrganizationName("Faultline")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: key)
        return CertificateAuthority(certificate: certificate, key: key)
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), signed by this CA, or by
    /// its own key when `selfSigned`.
    public func leaf(
        names: [String], notBefore: Date, notAfter: Date, selfSigned: Bool = false
    ) throws -> (certificate: Certificate, key: Certificate.PrivateKey) {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let subject = try DistinguishedName {
            CommonName(names.first ?? "localhost")
            OrganizationName("Faultline")
        }
        let alternativeNames = names.map { name -> GeneralName in
            if let bytes = IPAddressBytes.parse(name) { return .ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))) }
            return .dnsName(name)
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: key.publicKey,
            notValidBefore: notBefore,
            notValidAfter: notAfter,
            issuer: selfSigned ? subject : certificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(alternativeNames)
            },
            issuerPrivateKey: selfSigned ? key : self.key)
        return (certificate, key)
    }
}

public struct CertificateAuthorityError: Error, CustomStringConvertible {
    public var description: String
}

/// IPv4 and IPv6 literals as bytes, for subject alternative names.
enum IPAddressBytes {
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }
}
