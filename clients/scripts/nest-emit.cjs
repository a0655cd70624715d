// A NestJS producer set up as the README shows for Nest >= 11.1.7 (the `herald.events` topic exchange,
// the pattern as routing key), emitting one event: the integration tests run it to check that a real
// `ClientRMQ` reaches Herald on the broker users `herald broker setup` creates.
//
// Usage: node nest-emit.cjs AMQP_URL USER_ID TITLE
// Exit 0 once the broker confirmed the event (ClientRMQ publishes on a confirm channel); 1 with the
// broker's reason on stderr when it was refused or not confirmed within 15 s.
"use strict";
require("reflect-metadata");
const { ClientRMQ } = require("@nestjs/microservices");
const { lastValueFrom } = require("rxjs");

const [url, userId, title] = process.argv.slice(2);
const client = new ClientRMQ({
  urls: [url],
  exchange: "herald.events",
  exchangeType: "topic",
  wildcards: true,
  persistent: true,
});

function fail(reason) {
  console.error(`nest-emit: ${reason}`);
  process.exit(1);
}

// A refused declare closes the channel; ClientRMQ logs the reason and then retries for ever.
process.on("uncaughtException", (err) => fail(err.message));
const deadline = setTimeout(() => fail("not confirmed within 15 s"), 15_000);
client
  .connect()
  .then(() =>
    lastValueFrom(client.emit("notification.send", { userId, type: "SYSTEM_ANNOUNCEMENT", title }), {
      defaultValue: undefined,
    }),
  )
  .then(async () => {
    clearTimeout(deadline);
    console.log("emitted");
    await client.close();
  })
  .catch((err) => fail(err?.message ?? String(err)));
