import FaultlineCommands

@main
struct Faultctl {
    static func main() async {
        await FaultctlCommand.runWithDocumentedExitCodes()
    }
}
