import FaultlineCommands

@main
struct Faultlined {
    // Inside an async function the compiler picks AsyncParsableCommand's `main()`.
    static func main() async {
        await FaultlinedCommand.main()
    }
}
