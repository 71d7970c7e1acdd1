@testable import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct AcceptSteeringTests {
    /// A loop's window is the share of a core its thread used over at least 100 ms.
    @Test func loopLoadWindowMeasuresShareOfACore() {
        let window = LoopLoadWindow(slot: 0)
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var cpu: Int64 = 0
        #expect(window.tickEnded(at: now, cpu: { cpu }) == nil)
        var shares: [Double] = []
        for _ in 0..<10 {  // ticks 12 ms apart, 9 ms of CPU each
            now = now + .milliseconds(12)
            cpu += 9_000_000
            if let share = window.tickEnded(at: now, cpu: { cpu }) { shares.append(share) }
        }
        #expect(shares.count == 1)
        #expect(abs((shares.first ?? 0) - 0.75) < 0.001, "shares: \(shares)")
    }

    /// Connections spread once a loop has been busy for three windows in a row, and fill one
    /// loop again only when every loop is below the lower threshold or has gone quiet.
    @Test func steeringHasHysteresisAndForgetsQuietLoops() {
        let steering = AcceptSteering(logger: Logger(label: "test"))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        func at(_ milliseconds: Int64) -> NIODeadline { start + .milliseconds(milliseconds) }
        steering.report(loop: 0, share: 0.8, at: at(0))
        #expect(steering.fillsFirst, "80 % of a core is not busy")
        steering.report(loop: 0, share: 0.95, at: at(100))
        steering.report(loop: 0, share: 0.95, at: at(200))
        #expect(steering.fillsFirst, "two busy windows are a spike, not a busy loop")
        steering.report(loop: 0, share: 0.85, at: at(300))
        steering.report(loop: 0, share: 0.95, at: at(400))
        steering.report(loop: 0, share: 0.95, at: at(500))
        #expect(steering.fillsFirst, "a window below the threshold starts the count again")
        steering.report(loop: 0, share: 0.95, at: at(600))
        #expect(!steering.fillsFirst)
        steering.report(loop: 1, share: 0.1, at: at(650))
        steering.report(loop: 0, share: 0.5, at: at(700))
        #expect(!steering.fillsFirst, "a loop at 50 % keeps connections spread")
        steering.report(loop: 0, share: 0.1, at: at(800))
        #expect(steering.fillsFirst)
        for window in 0..<3 { steering.report(loop: 0, share: 0.95, at: at(900 + 100 * Int64(window))) }
        #expect(!steering.fillsFirst)
        // Loop 0 goes quiet (no events, no ticks); loop 1 reports 400 ms later.
        steering.report(loop: 1, share: 0.1, at: at(1_500))
        #expect(steering.fillsFirst, "a loop that has not reported for 300 ms is idle")
        // A streak broken by a quiet spell starts again.
        steering.report(loop: 0, share: 0.95, at: at(1_600))
        steering.report(loop: 0, share: 0.95, at: at(1_700))
        steering.report(loop: 0, share: 0.95, at: at(3_000))
        #expect(steering.fillsFirst, "the third busy window came after 1.3 s without a report")
    }

    /// Every loop goes quiet at once: no loop has a tick to report, and the look the steering
    /// takes again on its own puts connections back on one loop.
    @Test func quietGroupFillsOneLoopAgainWithoutReports() {
        let steering = AcceptSteering(logger: Logger(label: "test"))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        for window in 0..<3 { steering.report(loop: 0, share: 0.95, at: start + .milliseconds(100 * Int64(window))) }
        steering.report(loop: 1, share: 0.6, at: start + .milliseconds(250))
        #expect(!steering.fillsFirst)
        steering.reevaluate(at: start + .milliseconds(400))
        #expect(!steering.fillsFirst, "both loops reported within 300 ms")
        steering.reevaluate(at: start + .milliseconds(600))
        #expect(steering.fillsFirst, "neither loop has reported for 300 ms")
    }

    /// While no loop is busy every new connection lands on one loop (with the kernel's hash,
    /// 24 connections over 2 loops all land on one with a chance of 2 in 16 million); once a
    /// loop is busy, new connections go to every loop.
    @Test func newConnectionsFillOneLoopUntilOneIsBusy() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await TestServer.start(group: group, handler: { EchoHandler() })
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: server.port)], eventLoops: 2)
        var clients: [LineClient] = []
        do {
            let steering = try #require(daemon.proxy.steering)
            let listener = try #require(daemon.proxy.listener(named: "test"))
            // A loop of this daemon may look busy for a window of its own start while the
            // machine runs other tests beside it: wait (bounded) for connections to fill one loop,
            // and for that to hold 200 ms, since the program that says so is set on the
            // listener's loop after the state changes (a run that started right after a change
            // back saw its first connection land on the other loop).
            let calmBy = ContinuousClock.now + .seconds(10)
            var spreadsBefore = steering.spreads
            var calmSince = ContinuousClock.now
            while ContinuousClock.now < calmBy {
                if !steering.fillsFirst || steering.spreads != spreadsBefore {
                    spreadsBefore = steering.spreads
                    calmSince = ContinuousClock.now
                } else if ContinuousClock.now - calmSince >= .milliseconds(200) {
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            for index in 0..<24 {
                let client = try await LineClient.connect(port: daemon.port(), group: group)
                clients.append(client)
                #expect(try await client.exchange("hello \(index)") == "hello \(index)")
            }
            let filled = await listener.openConnectionsPerLoop()
            // All on one loop, unless a loop of this daemon really was busy meanwhile (then the
            // steering spread them, as it should, and the count says nothing).
            if steering.spreads == spreadsBefore {
                #expect(filled.sorted() == [0, 24], "per loop: \(filled)")
            }

            // A loop of its own (the daemon's loops report under 0, 1): busy until told otherwise,
            // reported again before each connection so that it never goes stale.
            for _ in 0..<AcceptSteering.busyWindows { steering.report(loop: 1000, share: 1, at: .now()) }
            #expect(!steering.fillsFirst)
            // The program is set on the listening socket's loop: connect until one lands
            // elsewhere (each has an even chance once the kernel hashes), for at most 10 s.
            let deadline = ContinuousClock.now + .seconds(10)
            var spread = filled
            while spread.contains(0), ContinuousClock.now < deadline, clients.count < 200 {
                steering.report(loop: 1000, share: 1, at: .now())
                let client = try await LineClient.connect(port: daemon.port(), group: group)
                clients.append(client)
                #expect(try await client.exchange("again") == "again")
                spread = await listener.openConnectionsPerLoop()
            }
            #expect(!spread.contains(0), "per loop once a loop is busy: \(spread)")

            // Back to one loop once every loop is quiet or below the lower threshold, with no
            // report from loop 1000 any more: the connections are idle, the daemon's loops
            // have no events and so no ticks to report, and the steering's own timer looks
            // again (a loop slowed down by a sanitizer may stay above the threshold for a while).
            let quietBy = ContinuousClock.now + .seconds(10)
            while !steering.fillsFirst, ContinuousClock.now < quietBy {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(steering.fillsFirst)
        } catch {
            Issue.record(error)
        }
        for client in clients { try? await client.close() }
        await daemon.shutdown()
        await server.stop()
        try await group.shutdownGracefully()
    }
}
