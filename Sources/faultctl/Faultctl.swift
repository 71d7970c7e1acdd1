import FaultlineCommands

@main
struct Faultctl {
    // Inside an async function the compiler picks AsyncParsableCommand's `main()`.
    static func main() async {
        await FaultctlCommand.main()
    }
}
