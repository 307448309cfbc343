/*-------------------------------------------------------------------------
 *
 * metering.h
 *		Prices and the cost of a call (metering.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUOTA_METERING_H
#define QUOTA_METERING_H

#include "quota_ext.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"

/* metering.c: prices and the cost of a call */
typedef struct QuotaPrice
{
	bool		found;			/* false: unpriced (cost 0) */
	int64		price_id;
	char		currency[4];
	bool		has_unit;
	bool		has_input;
	bool		has_output;
	Datum		unit_price;		/* numeric; valid until QuotaSpiEnd */
	Datum		input_per_1k;
	Datum		output_per_1k;
	TimestampTz valid_until;	/* when the next version starts (or +inf) */
} QuotaPrice;

extern void QuotaPriceFromTuple(HeapTuple tup, TupleDesc desc, int first_col,
								QuotaPrice *out);
extern void QuotaPriceAt(int64 tenant_id, int64 model_id, TimestampTz at,
						 QuotaPrice *out);
extern void QuotaPriceById(int64 price_id, QuotaPrice *out);
extern int64 QuotaCostMicro(const QuotaPrice *price, int64 units,
							int64 input_tokens, int64 output_tokens);
extern Datum QuotaMicroToNumeric(int64 micro);
extern int64 QuotaNumericToMicro(Datum amount);

#endif							/* QUOTA_METERING_H */
