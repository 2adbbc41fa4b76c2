//! Names and declaration of the queues and exchanges. Declaring is idempotent, so the API and
//! the worker both declare at start; a declaration with different arguments fails (406) rather
//! than silently changing a live queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use tally_core::shard_of;

/// The topology of one tally installation (or of one test: each test has its own prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Name prefix of every exchange and queue.
    pub prefix: String,
    /// K, the number of shard queues.
    pub shard_count: u16,
    /// Deliveries of one message before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
}

impl Topology {
    /// The topology the settings describe (prefix, K, delivery limit).
    pub fn from_settings(settings: &tally_settings::Settings) -> Self {
        Self {
            prefix: settings.broker.prefix.clone(),
            shard_count: settings.ledger.shard_count,
            delivery_limit: settings.broker.delivery_limit,
        }
    }

    /// Direct exchange every command is published to, routed by shard number.
    pub fn exchange(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Fanout exchange receiving dead letters of every shard queue.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The queue holding dead letters for inspection and re-publishing.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn shard_queue(&self, shard: u16) -> String {
        format!("{}.shard.{shard}", self.prefix)
    }

    /// Routing key of a shard: its number.
    pub fn routing_key(shard: u16) -> String {
        shard.to_string()
    }

    pub fn shard_of(&self, account_id: &str) -> u16 {
        shard_of(account_id, self.shard_count)
    }

    /// The arguments of a shard queue. Two traps: the delivery limit must be an integer (a
    /// string is silently not enforced), and at-least-once dead-lettering needs
    /// `x-overflow = reject-publish`.
    fn shard_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Ready messages per queue (every shard queue, then the dead-letter queue), by passive
    /// declaration: it never creates or changes a queue.
    pub async fn queue_depths(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(String, u32)>, lapin::Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut names: Vec<String> = (0..self.shard_count).map(|s| self.shard_queue(s)).collect();
        names.push(self.dead_queue());
        let mut depths = Vec::with_capacity(names.len());
        for name in names {
            let queue = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await?;
            depths.push((name, queue.message_count()));
        }
        Ok(depths)
    }

    /// Declares exchanges, queues and bindings.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let queue_opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(self.dead_queue().into(), queue_opts, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for shard in 0..self.shard_count {
            channel
                .queue_declare(
                    self.shard_queue(shard).into(),
                    queue_opts,
                    self.shard_arguments(),
                )
                .await?;
            channel
                .queue_bind(
                    self.shard_queue(shard).into(),
                    self.exchange().into(),
                    Self::routing_key(shard).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}
