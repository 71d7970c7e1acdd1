/// The version both executables report.
public enum FaultlineVersion {
    public static let current = "0.1.0"
}
