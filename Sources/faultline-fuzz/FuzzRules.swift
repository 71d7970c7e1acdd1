import FaultlineRules

/// libFuzzer's entry: any bytes as a rule file and as a fault rule body (what the control
/// socket and `faultctl inject` hand to the same parser). Every outcome is fine except a
/// crash, a hang or an error without a position.
@_cdecl("LLVMFuzzerTestOneInput")
public func faultlineFuzzRules(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let bytes = start.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []
    exerciseRuleParsers(String(decoding: bytes, as: UTF8.self))
    return 0
}

func exerciseRuleParsers(_ text: String) {
    switch RuleLoader.load(sources: [(file: "fuzz.yaml", text: text)]) {
    case .success(let rules):
        _ = rules.summary
        precondition(rules.files == ["fuzz.yaml"])
    case .failure(let errors):
        precondition(!errors.errors.isEmpty, "a rejected file must say why")
        for error in errors.errors { precondition(error.location.line >= 1, "an error without a line: \(error)") }
    }
    switch RuleLoader.parseFault(text, source: "request") {
    case .success(let fault):
        precondition(!fault.name.isEmpty && (0...1).contains(fault.probability))
    case .failure(let errors):
        precondition(!errors.errors.isEmpty)
    }
}

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt
) -> CInt

/// SwiftPM links every executable with `main` pointing at the module's own entry point, so
/// libFuzzer's `main` is not used: this entry hands the command line to libFuzzer's driver.
@_cdecl("faultline_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { start, length in faultlineFuzzRules(start, length) }
}
#else
/// Without libFuzzer (a plain build): runs the files given as arguments through the same
/// checks, so that a crash the fuzzer found can be replayed under a debugger.
@main
struct ReplayCorpus {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else { continue }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = fread(&chunk, 1, chunk.count, file)
                if count <= 0 { break }
                bytes += chunk[0..<count]
            }
            fclose(file)
            exerciseRuleParsers(String(decoding: bytes, as: UTF8.self))
            print("ok \(path)")
        }
    }
}
#endif

#if canImport(Glibc)
import Glibc
#endif
